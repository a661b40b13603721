"""The GPU catalog: canonical names, aliases, NVML names."""

from __future__ import annotations

import pytest

from gpunet.catalog import catalog, model_from_nvml_name, resolve_model
from gpunet.errors import ValidationFailed


def test_catalog_rows_are_sane() -> None:
    models = catalog()
    assert {"A100-80GB", "H100-80GB", "H200-141GB", "RTX-4090", "V100", "T4"} <= set(models)
    for name, m in models.items():
        assert m.name == name
        assert m.memory_mb > 0 and m.memory_bandwidth_gbps > 0
        assert m.compute_capability >= (3, 0)
    assert models["A100-80GB"].compute_capability == (8, 0)
    assert models["H100-80GB"].compute_capability == (9, 0)
    assert models["RTX-4090"].compute_capability == (8, 9)
    assert models["A100-80GB"].memory_mb > models["A100-40GB"].memory_mb


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("A100-80GB", "A100-80GB"),
        ("a100-80gb", "A100-80GB"),
        ("  A100-80GB  ", "A100-80GB"),
        ("A100 80GB", "A100-80GB"),
        ("a100_80gb", "A100-80GB"),
        ("A100", "A100-80GB"),
        ("a100", "A100-80GB"),
        ("H100", "H100-80GB"),
        ("h200", "H200-141GB"),
        ("4090", "RTX-4090"),
        ("rtx 4090", "RTX-4090"),
        ("RTX_4090", "RTX-4090"),
        ("3090", "RTX-3090"),
        ("a6000", "RTX-A6000"),
        ("V100-16GB", "V100"),
        ("v100", "V100"),
        ("P100-16GB", "P100"),
        ("t4", "T4"),
        ("l40s", "L40S"),
        ("h100-pcie-80gb", "H100-PCIE-80GB"),
    ],
)
def test_resolve_model_aliases_and_case(typed: str, canonical: str) -> None:
    assert resolve_model(typed) == canonical
    assert canonical in catalog()


@pytest.mark.parametrize("bad", ["Z9000", "A100-81GB", "", "H100X", "RTX-5090-TI"])
def test_unknown_model_lists_known_ones(bad: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        resolve_model(bad, field="resources.gpu_models")
    err = exc.value
    assert err.field == "resources.gpu_models"
    assert "unknown GPU model" in err.reason
    for known in catalog():
        assert known in err.reason


@pytest.mark.parametrize(
    ("nvml", "memory_mb", "model"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
        ("NVIDIA H100 PCIe", 81559, "H100-PCIE-80GB"),
        ("NVIDIA H100 NVL", 95830, "H100-NVL-94GB"),
        ("NVIDIA H200", 143771, "H200-141GB"),
        ("NVIDIA GH200 480GB", 97871, "GH200-96GB"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100-PCIE-40GB"),
        ("NVIDIA A100 80GB PCIe", 81920, "A100-PCIE-80GB"),
        ("NVIDIA A10", 23028, "A10"),
        ("NVIDIA GeForce RTX 4090", 24564, "RTX-4090"),
        ("NVIDIA GeForce RTX 3090", 24576, "RTX-3090"),
        ("NVIDIA RTX A6000", 49140, "RTX-A6000"),
        ("NVIDIA L4", 23034, "L4"),
        ("NVIDIA L40S", 46068, "L40S"),
        ("Tesla V100-SXM2-16GB", 16384, "V100"),
        ("Tesla V100-SXM2-32GB", 32768, "V100-32GB"),
        ("Tesla P100-SXM2-16GB", 16280, "P100"),
        ("Tesla T4", 15360, "T4"),
        ("Tesla K80", 11441, "K80"),
        ("NVIDIA B200", 183359, "B200"),
    ],
)
def test_model_from_nvml_name(nvml: str, memory_mb: int, model: str) -> None:
    assert model_from_nvml_name(nvml, memory_mb) == model


@pytest.mark.parametrize("nvml", ["NVIDIA GeForce GTX 1080", "Quadro P2000", "Matrox G200"])
def test_model_from_nvml_name_unknown(nvml: str) -> None:
    assert model_from_nvml_name(nvml, 8192) is None
