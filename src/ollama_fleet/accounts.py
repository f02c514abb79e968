"""Users and groups: who instances and gateway workers run as, and what that user may do
(asked of the kernel, as that user)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from ollama_fleet.errors import BadInput, Missing, UserError


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
    # Made and chowned through file descriptors, never by path again: the home is the
    # user's, who could swap the new dir for a link between a mkdir and a chown by path,
    # and have root chown any file of the machine to them.
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            os.mkdir(".ollama", 0o755, dir_fd=home_fd)
        except FileExistsError:
            return  # theirs already (a dir, or a link they made): nothing to chown
        try:
            fd = os.open(".ollama", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=home_fd)
        except OSError:
            raise UserError(f"user: {home}/.ollama changed while it was being made; try again") from None
        try:
            os.fchown(fd, account.pw_uid, account.pw_gid)
        finally:
            os.close(fd)
    finally:
        os.close(home_fd)


def check_trusted(path: Path, field: str) -> None:
    """Refuse a config file or state dir that someone else could have written, as git's
    safe.directory and sshd's StrictModes do: it must belong to whoever runs the fleet (or
    root) and be writable by no one else. Root reading a file planted in /tmp or a shared
    checkout would otherwise run another user's ollama_bin, or signal the pids of their
    forged state. BadInput (exit 2) naming it and why."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid not in (os.geteuid(), 0):
        owner = _user_name(info.st_uid)
        raise BadInput(
            f"{field}: {path} belongs to {owner}, not to you or root: refused (another user could have "
            f"written it); chown it, or give one of your own"
        )
    if info.st_mode & 0o022:
        raise BadInput(
            f"{field}: {path} is writable by {'every user' if info.st_mode & 0o002 else 'its group'} "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): refused; chmod go-w {path}"
        )


def _user_name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


STATE_MODE = 0o711  # see make_state_dir


def make_state_dir(path: Path) -> None:
    """The state dir, made private: 0700, or 0711 as root, where the gateway's workers run
    as another user and must pass through it to the gateway's temp dir (they cannot list it;
    every file in it is 0600 and its logs dir 0700). Refused when it exists and is not ours."""
    path.mkdir(mode=STATE_MODE if os.geteuid() == 0 else 0o700, parents=True, exist_ok=True)
    check_trusted(path, "state_dir")


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


def worker_user() -> tuple[str, str] | None:
    """The user gateway workers run as when root starts them: `nobody`, an account of their
    own, never root and never the instances' user (who owns the models and Ollama's key)."""
    if os.geteuid() != 0:
        return None
    account = pwd.getpwnam("nobody")
    return (account.pw_name, grp.getgrgid(account.pw_gid).gr_name)


def run_as(user: str | None, models_owner: str | None, models_dir: Path | None = None) -> str | None:
    """Who instances run as when root starts them: --user, else the models dir's owner
    (running as root against the `ollama` user's models leaves root-owned blobs there).
    Root only when asked for by name: a root-owned models dir is no reason to run Ollama as root."""
    name = user or (models_owner if os.geteuid() == 0 else None)
    if name == "root" and user != "root":
        raise BadInput(
            f"user: the models dir{f' {models_dir}' if models_dir else ''} belongs to root, so the instances "
            "would run as root; chown it to the service user (chown -R ollama: DIR) and pass --user ollama, "
            "or pass --user root to mean it"
        )
    if name is not None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise Missing(f"user: no user {name!r} on this machine (create it, or pass --user)") from None
    return name
