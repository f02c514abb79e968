"""Users and groups: who instances and gateway workers run as, and what that user may do
(asked of the kernel, as that user)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from ollama_fleet.errors import Missing


def useradd_hint(user: str) -> str:
    return f"useradd --system --user-group --create-home --home-dir /usr/share/ollama --shell /usr/sbin/nologin {user}"


def service_account(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise Missing(
            f"user: no user {user!r} to run the instances; create it ({useradd_hint(user)}) or pass --user"
        ) from None


def can_use(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether this user may read and write the dir, every parent on the way included."""
    return can_use_dir(path, account, os.R_OK | os.W_OK | os.X_OK)


def can_use_dir(path: Path, account: pwd.struct_passwd, mode: int) -> bool:
    """access(path, mode) as the user: asked of the kernel itself, in a child process that
    becomes the user."""
    pid = os.fork()
    if pid == 0:  # the child: become the user, ask, exit with the answer
        try:
            os.setgroups(os.getgrouplist(account.pw_name, account.pw_gid))
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os._exit(0 if os.access(path, mode) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def why_not_usable(path: Path, account: pwd.struct_passwd) -> str:
    """Why the user cannot use the dir, said once: a parent it can never pass (/root is
    0700), or the dir itself, which a chown mends."""
    for parent in reversed(path.parents):
        if not can_use_dir(parent, account, os.X_OK):
            mode = stat.S_IMODE(parent.stat().st_mode) if parent.exists() else 0
            return (
                f"user {account.pw_name} can never reach {path}: {parent} (mode {mode:04o}) does not let it "
                f"through; put the models elsewhere (--models-dir {home_of(account.pw_name)}/.ollama/models), "
                "or pass --user"
            )
    return f"user {account.pw_name} cannot read and write {path} (chown -R {account.pw_name}: {path}, or pass --user)"


def prepare_home(account: pwd.struct_passwd) -> None:
    """~/.ollama of the service user, owned by it: Ollama writes its key there at start
    (cmd/cmd.go initializeKeypair) and exits when it cannot."""
    home = Path(account.pw_dir)
    if not home.is_dir():
        raise Missing(
            f"user: the home of {account.pw_name}, {home}, does not exist; Ollama keeps its key in ~/.ollama "
            f"(mkdir -p {home} && chown {account.pw_name}: {home}, or pass --user)"
        )
    state = home / ".ollama"
    if not state.is_dir():
        state.mkdir(mode=0o755)
        os.chown(state, account.pw_uid, account.pw_gid)


def group_of(user: str) -> str:
    """The user's primary group, or a group of the same name (useradd --user-group)."""
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def home_of(user: str) -> Path:
    try:
        return Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        return Path("/usr/share/ollama")  # the official installer's home for `ollama`


def is_root() -> bool:
    return os.geteuid() == 0


def groups_of(account: pwd.struct_passwd) -> list[int]:
    # The `video`/`render` groups give access to /dev/nvidia* on some distributions.
    return os.getgrouplist(account.pw_name, account.pw_gid)


def worker_user(run_as: str | None) -> tuple[str, str] | None:
    """The user nginx workers run as when root starts it: the service user, never root."""
    if os.geteuid() != 0:
        return None
    name = run_as if run_as and run_as != "root" else "nobody"
    account = pwd.getpwnam(name)
    return (account.pw_name, grp.getgrgid(account.pw_gid).gr_name)


def run_as(user: str | None, models_owner: str | None) -> str | None:
    """Who instances run as when root starts them: --user, else the models dir's owner
    (running as root against the `ollama` user's models leaves root-owned blobs there)."""
    name = user or (models_owner if os.geteuid() == 0 else None)
    if name is not None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise Missing(f"user: no user {name!r} on this machine (create it, or pass --user)") from None
    return name
