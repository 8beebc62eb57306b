"""Which environment variables a parameter or context variable may set, and what values it may hold.

Parameters and context variables become the command's environment. Some names change how the
shell, the dynamic linker or an interpreter behaves before the command runs a line of its own
(`LD_PRELOAD`, `PATH`, `BASH_ENV`, ...): a definition, a context, a `--param` or a trigger that
sets one is refused (`EnvPolicy.problem`), and an agent refuses a dispatch whose environment sets
one (defence in depth against an older or hostile writer). An installation adjusts the set with
`CYCLONETIX_DENY_ENV` (read by the CLI: `parse_deny_env`): comma-separated names to deny as well,
`-NAME` to allow a default one again. Names starting with `CYCLONETIX_` stay reserved: Cyclonetix
sets them itself.

A value holding a NUL byte cannot be passed to a process (execve would refuse it at spawn time),
and a value larger than `MAX_VALUE_BYTES` is refused too. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

from core.errors import Invalid

DEFAULT_DENIED_ENV: Final = frozenset(
    {
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "BASH_ENV",
        "IFS",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "CDPATH",
        "GLOBIGNORE",
        "NODE_OPTIONS",
        "PERL5OPT",
        "PERL5LIB",
        "RUBYOPT",
        "RUBYLIB",
        "JAVA_TOOL_OPTIONS",
        "GCONV_PATH",
        "HOSTALIASES",
        "MALLOC_CHECK_",
    }
)
# Not `ENV`: POSIX shells read it only when interactive (commands run as `/bin/sh -c`), and it
# is a common name for a deployment's environment (the bundled examples' contexts set it). An
# installation denies it too with CYCLONETIX_DENY_ENV=ENV.
DEFAULT_DENIED_PREFIXES: Final = ("LD_", "DYLD_", "CYCLONETIX_")
RESERVED_PREFIX: Final = "CYCLONETIX_"  # never allowed back: Cyclonetix sets these itself
# What the orchestrator itself puts in a dispatch's environment (core.graph.task_environment).
SET_BY_CYCLONETIX: Final = frozenset(
    {"CYCLONETIX_RUN_ID", "CYCLONETIX_TASK_ID", "CYCLONETIX_ATTEMPT"}
)
MAX_VALUE_BYTES: Final = 64 * 1024  # one parameter or variable value, UTF-8 encoded
DENY_ENV_VARIABLE: Final = "CYCLONETIX_DENY_ENV"


class EnvPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """The denied names: `denied`, and every name starting with one of `prefixes` except the
    ones in `allowed`."""

    denied: frozenset[str] = DEFAULT_DENIED_ENV
    prefixes: tuple[str, ...] = DEFAULT_DENIED_PREFIXES
    allowed: frozenset[str] = frozenset()

    def denies(self, name: str) -> bool:
        if name in self.denied:
            return True
        if name in self.allowed:
            return False
        return name.startswith(self.prefixes)

    def problem(self, name: str, value: str) -> str | None:
        """Why `name=value` may not be in a command's environment (one line), or None."""
        if self.denies(name):
            return (
                f"{name} is a denied environment variable: no parameter or context variable "
                f"may set it (an installation changes the list with {DENY_ENV_VARIABLE})"
            )
        return value_problem(value)


DEFAULT_ENV_POLICY: Final = EnvPolicy()


def value_problem(value: str) -> str | None:
    """Why a value cannot be an environment variable's (one line), or None."""
    if "\0" in value:
        return "the value holds a NUL byte, which no environment variable can hold"
    if len(value) > MAX_VALUE_BYTES // 4:  # (cheap: most values are short)
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_VALUE_BYTES:
            return f"the value is {size} bytes, more than the limit of {MAX_VALUE_BYTES}"
    return None


def parse_deny_env(text: str, base: EnvPolicy = DEFAULT_ENV_POLICY) -> EnvPolicy:
    """`CYCLONETIX_DENY_ENV`: comma-separated names to deny as well, `-NAME` to allow a default
    one again (not a `CYCLONETIX_` one). Invalid (one line) for a malformed entry."""
    denied = set(base.denied)
    allowed = set(base.allowed)
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        allow = item.startswith("-")
        name = item[1:] if allow else item
        if not name or not (name[0].isalpha() or name[0] == "_") or not _env_name(name):
            raise Invalid(
                f"{DENY_ENV_VARIABLE}: invalid entry {item!r}: expected NAME or -NAME "
                "(letters, digits and '_')"
            )
        if allow:
            if name.startswith(RESERVED_PREFIX):
                raise Invalid(
                    f"{DENY_ENV_VARIABLE}: {name} cannot be allowed: names starting with "
                    f"{RESERVED_PREFIX} are set by Cyclonetix"
                )
            denied.discard(name)
            allowed.add(name)
        else:
            denied.add(name)
            allowed.discard(name)
    return EnvPolicy(denied=frozenset(denied), prefixes=base.prefixes, allowed=frozenset(allowed))


def _env_name(name: str) -> bool:
    return name.isascii() and all(c.isalnum() or c == "_" for c in name)


def dispatch_env_problem(env: dict[str, str], policy: EnvPolicy = DEFAULT_ENV_POLICY) -> str | None:
    """Why an agent must not run a dispatch with this environment (one line), or None.

    The names the orchestrator sets itself (`SET_BY_CYCLONETIX`) are expected there."""
    for name, value in env.items():
        if name in SET_BY_CYCLONETIX:
            continue
        problem = policy.problem(name, value)
        if problem is not None:
            return f"refused to run the command: its environment variable {name}: {problem}"
    return None
