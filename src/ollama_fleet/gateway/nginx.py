"""The nginx engine: renders the snippet or a standalone nginx.conf, checks it with
`nginx -t`, and runs a private nginx (`nginx -p PREFIX -c CONF`) for `up`."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import psutil

from ollama_fleet.errors import BadInput, UserError
from ollama_fleet.gateway import GatewayStats, InstallLayout
from ollama_fleet.gateway.lifecycle import redrain
from ollama_fleet.gateway.spec import REDACTED, GatewaySpec
from ollama_fleet.keys import tenants
from ollama_fleet.processes import is_alive, require_tool, run_tool, wait_took_over, workers
from ollama_fleet.render import RenderedFile, render
from ollama_fleet.state import GatewayState, read_gateway
from ollama_fleet.waiting import wait_until

PID_FILE = "nginx.pid"
# Under systemd the gateway is a snippet in the distribution's nginx, which serves it.
SNIPPET = Path("/etc/nginx/conf.d/ollama-fleet.conf")
UNIT = "nginx.service"


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    # nginx's own words: the [emerg] line names the file, the line and the problem.
    return run_tool(argv, what, ("[emerg]", "[alert]"))


class Nginx:
    name = "nginx"
    always_complete = False
    check_command = "nginx -t"
    drains_installed = False  # the system's nginx serves others too: `restart --rolling` leaves it alone
    logs_requests = False

    def ports(self, spec: GatewaySpec) -> dict[str, tuple[str, int]]:
        return {"listen": (spec.listen.host, spec.listen.port)}

    def install_layout(self, spec: GatewaySpec) -> InstallLayout:
        """A snippet in the distribution's conf.d, checked with nginx -t first."""
        content = self.render(spec, standalone=False, prefix=SNIPPET.parent, user=None)
        self.check(content, standalone=False)
        return InstallLayout(files=(RenderedFile(SNIPPET, content, spec.file_mode),), unit=UNIT, owned=False)

    def render(
        self,
        spec: GatewaySpec,
        *,
        standalone: bool,
        prefix: Path,
        user: tuple[str, str] | None = None,
        config: Path | None = None,
    ) -> str:
        if spec.models:
            raise BadInput(
                "models: routing by model needs the request body's `model`, which only the HAProxy engine reads; "
                "add --engine haproxy (or remove the placement)"
            )
        for tenant in tenants(spec.api_keys):
            if tenant.priority != "normal":
                raise BadInput(
                    f"api_keys_file: priority={tenant.priority} (key {tenant.name}) orders a queue, and nginx has "
                    "none; add --engine haproxy (or drop the priority)"
                )
            if tenant.rate is not None and tenant.rate.period == 3600:
                raise BadInput(
                    f"api_keys_file: rate={tenant.rate} (key {tenant.name}): nginx counts per second or minute; "
                    "give N/s or N/m, or add --engine haproxy"
                )
        snippet = render("nginx/fleet.conf.j2", **_context(spec))
        if not standalone:
            return snippet
        return render(
            "nginx/standalone.conf.j2",
            snippet=snippet.rstrip("\n"),
            prefix=prefix,
            config=config,
            user=user[0] if user else None,
            group=user[1] if user else None,
        )

    def prepare(self, prefix: Path) -> None:
        """The directories the standalone config names: its logs and temp paths (nginx makes
        the temp subdirectories itself, owned by its worker user, so temp/ must let that user
        through: 0755)."""
        for path in (prefix, prefix / "logs", prefix / "temp"):
            path.mkdir(mode=0o755, parents=True, exist_ok=True)

    def redact(self, text: str) -> str:
        """The API keys in a config this engine rendered (old or new) shown as <redacted>."""
        # Both maps: the key check (`... 1;`) and the key's name (`... alice;`).
        return re.sub(
            r'^(\s*"~\^(?:\[A-Z\]\+ )?(?:Bearer |\(\?i:bearer\) \+)).*(\$" \S+;)$',
            rf"\g<1>{REDACTED}\g<2>",
            text,
            flags=re.M,
        )

    def check(self, content: str, *, standalone: bool, prefix: Path | None = None) -> None:
        """`nginx -t`: a standalone config where it will run (under `prefix`), a snippet
        included in a minimal http {} under a temporary prefix."""
        nginx = require_tool("nginx")
        if standalone:
            assert prefix is not None
            self.prepare(prefix)
            with tempfile.NamedTemporaryFile("w", dir=prefix, prefix=".check-", suffix=".conf") as fh:
                fh.write(content)
                fh.flush()
                _run([nginx, "-t", "-q", "-p", str(prefix), "-c", fh.name], "nginx -t")
            return
        with tempfile.TemporaryDirectory(prefix="ollama-fleet-check-") as tmp:
            root = Path(tmp)
            self.prepare(root)
            (root / "snippet.conf").write_text(content)
            wrapper = render(
                "nginx/standalone.conf.j2",
                snippet=f"include {root}/snippet.conf;",
                prefix=root,
                config=root / "nginx.conf",
                user=None,
                group=None,
            )
            (root / "nginx.conf").write_text(wrapper)
            _run([nginx, "-t", "-q", "-p", str(root), "-c", str(root / "nginx.conf")], "nginx -t")

    def start(self, prefix: Path, config: Path) -> int:
        self.prepare(prefix)
        (prefix / PID_FILE).unlink(missing_ok=True)
        _run([require_tool("nginx"), "-p", str(prefix), "-c", str(config)], "starting nginx")
        pid = self.running(prefix)
        if pid is None:
            raise UserError(f"nginx started but wrote no pid file in {prefix}; see {prefix}/logs/error.log")
        return pid

    def reload(self, prefix: Path, config: Path) -> None:
        """A graceful reload: new workers take the new config, old ones finish their streams.
        Returns once the new workers listen and the old ones do not (processes.wait_took_over):
        nginx applies a reload (SIGHUP) a moment after `nginx -s reload` returns."""
        master = self.running(prefix)
        before = {w.pid for w in workers(master)}
        _run([require_tool("nginx"), "-p", str(prefix), "-c", str(config), "-s", "reload"], "nginx -s reload")
        if master is not None:
            wait_took_over(master, before, "nginx", prefix / "logs" / "error.log")

    def running(self, prefix: Path) -> int | None:
        try:
            return int((prefix / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def stats(self, prefix: Path) -> GatewayStats | None:
        return None  # open-source nginx exposes no per-upstream counts

    def drain(self, state_dir: Path, name: str, timeout: float) -> int:
        """Re-render with the server `down` and reload: new workers never send it a request;
        the old ones finish theirs and exit. Wait for them (nginx counts no requests)."""
        state = _running_state(state_dir)
        old = _reload(self, state_dir, state, tuple(dict.fromkeys([*_spec(state).drained, name])))
        wait_until(lambda: not any(is_alive(w) for w in old), timeout)
        return sum(is_alive(w) for w in old)

    def undrain(self, state_dir: Path, name: str, timeout: float) -> None:
        state = _running_state(state_dir)
        _reload(self, state_dir, state, tuple(n for n in _spec(state).drained if n != name))


def _reload(engine: Nginx, state_dir: Path, state: GatewayState, drained: tuple[str, ...]) -> list[psutil.Process]:
    """Re-render with `drained` and reload (which waits until the master runs workers of
    the new config); returns the workers from before (they finish their requests, then exit).

    Waiting for the new workers matters: a reload (SIGHUP) is applied later, and a drain
    that took its snapshot of workers while an undrain's reload was still pending would
    miss the workers that reload starts, and restart an instance they still stream from."""
    old = workers(state.process.pid if state.process and state.process.process() else None)
    redrain(engine, state_dir, state, drained)
    return old


def _running_state(state_dir: Path) -> GatewayState:
    state = read_gateway(state_dir)
    if state is None or state.spec is None:
        raise UserError(f"no gateway state in {state_dir}: run `ollama-fleet up` again first")
    return state


def _spec(state: GatewayState) -> GatewaySpec:
    return GatewaySpec.model_validate(state.spec)


def _context(spec: GatewaySpec) -> dict:
    return {
        "instances": spec.instances,
        "listen": str(spec.listen),
        "allow": spec.allow,
        "hosts": spec.hosts,
        "api_keys": spec.api_keys,
        "balance": spec.balance,
        "read_timeout": spec.read_timeout,
        "max_body_size": spec.max_body_size,
        "tls": spec.tls,
        "drained": spec.drained,
        "info": spec.info,
        "tenants": tenants(spec.api_keys),
    }
