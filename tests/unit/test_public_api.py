"""What `import orchestrator` offers a service or a handler module, as the docs show it."""

from __future__ import annotations

import subprocess
import sys

import orchestrator
from tests.support import REPO_ROOT


def test_every_public_name_is_importable_from_the_package() -> None:
    from orchestrator import OrchestratorClient
    from orchestrator.client import OrchestratorClient as defined

    assert OrchestratorClient is defined
    assert set(orchestrator.__all__) == {
        "OrchestratorClient",
        "capability",
        "circuit_breaker",
        "on_event",
    }
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None


def test_a_handler_module_importing_capability_does_not_load_the_client() -> None:
    script = "import sys, orchestrator; print('orchestrator.client' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "False"
