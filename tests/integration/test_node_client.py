"""A Celery client written by others, the npm package celery-node, submits work by name.

celery-node speaks Celery's protocol 2 and reads results from the Redis backend itself, so
this checks the by-name contract against a client that shares no code with this project. It
is skipped where `node`/`npm` are missing or the package cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: The module's shared cluster (tests/integration/conftest.py): a control worker and one agent.
SHARED_AGENTS = {"a": ("echo", 1)}

VERSION = "0.5.9"
#: Outside the repository and kept between sessions, so only the first run downloads it.
INSTALL_DIR = Path.home() / ".cache" / "hive-orchestrator-tests" / f"celery-node-{VERSION}"

SCRIPT = """
const celery = require("celery-node");
const url = process.argv[2];
const client = celery.createClient(url, url);
const submit = client.createTask("orchestrator.submit");
const wait = (what, result) => result.get(30000).catch((err) => {
  throw new Error(`${what} (${result.taskId}): ${err.message} ${JSON.stringify(err)}`);
});
(async () => {
  const value = await wait("plain", submit.applyAsync([], {type: "echo", payload: {x: 1}}));
  const own = submit.applyAsync([], {type: "echo", payload: {y: 2}, task_id: "node-1"});
  const [byMessage, tracked] = await Promise.all(
    [wait("message id", own), wait("task_id", client.asyncResult("node-1"))]);
  console.log(JSON.stringify({value, tracked, by_message: byMessage, message_id: own.taskId}));
  await client.disconnect();
})().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
"""


@pytest.fixture(scope="module")
def celery_node() -> Path:
    """The directory whose node_modules holds celery-node, installed on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the celery-node client")
    installed = INSTALL_DIR / "node_modules" / "celery-node" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == VERSION:
        return INSTALL_DIR
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    command = ["npm", "install", "--no-audit", "--no-fund", "--silent"]
    command += ["--prefix", str(INSTALL_DIR), f"celery-node@{VERSION}"]
    try:
        subprocess.run(
            command, cwd=INSTALL_DIR, capture_output=True, text=True, timeout=120, check=True
        )
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"npm install celery-node@{VERSION} failed (no registry?): {exc.stderr[-300:]}")
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install celery-node@{VERSION} took over 120 s (no registry?)")
    return INSTALL_DIR


@pytest.mark.timeout(300)  # a first run downloads the package
def test_celery_node_submits_by_name_and_reads_both_ids(celery_node, shared, tmp_path):
    """`orchestrator.submit` sent by celery-node gives the handler's value; with a `task_id`,
    that id and the message's own id both resolve to it."""
    script = tmp_path / "client.js"
    script.write_text(SCRIPT)
    env = {**os.environ, "NODE_PATH": str(celery_node / "node_modules")}
    out = subprocess.run(
        ["node", str(script), shared.url], env=env, capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, f"celery-node client failed:\n{out.stderr}{out.stdout}"
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    message_id = reply.pop("message_id")
    assert message_id != "node-1"
    assert reply == {"value": {"x": 1}, "tracked": {"y": 2}, "by_message": {"y": 2}}
