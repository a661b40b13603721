"""The agent's job sandbox: bubblewrap namespaces, a dedicated uid and a cgroup per attempt,
under a seccomp filter.

``detect.probe`` finds what the host supports; ``launch.Sandbox`` opens one ``AttemptBox`` per
attempt; ``bwrap.build_argv`` is the command line; ``seccomp.program`` the filter;
``env.job_env`` the environment, from scratch.
"""

from gpunet.agent.sandbox.cgroups import Limits
from gpunet.agent.sandbox.detect import Isolation, probe
from gpunet.agent.sandbox.env import job_env
from gpunet.agent.sandbox.launch import AttemptBox, Sandbox, SandboxConfig

__all__ = ["AttemptBox", "Isolation", "Limits", "Sandbox", "SandboxConfig", "job_env", "probe"]
