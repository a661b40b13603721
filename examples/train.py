"""A stand-in training script: prints its GPUs and a few steps."""

import os
import time

print("CUDA_VISIBLE_DEVICES =", os.environ.get("CUDA_VISIBLE_DEVICES"))
for step in range(int(os.environ.get("STEPS", "3"))):
    print(f"step {step}", flush=True)
    time.sleep(0.2)
print("done")
