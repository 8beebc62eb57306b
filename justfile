# Cyclonetix tasks. `just` lists them; `pip install -e '.[dev]'` puts `just` in .venv/bin.
set dotenv-load := false

venv := ".venv"
py := venv / "bin/python"
bin := venv / "bin"

[doc("List recipes")]
default:
    @just --list --unsorted

[doc("Create .venv and install the project with dev tools (brings nats-server and just)")]
[group("setup")]
install:
    python3 -m venv {{venv}}
    {{py}} -m pip install -e '.[dev]'

[doc("Run everything locally: embedded NATS, orchestrator, agents")]
[group("run")]
dev *args:
    {{bin}}/cyclonetix dev {{args}}

[doc("Validate a definitions folder (default: the examples)")]
[group("run")]
validate dir="infra/examples":
    {{bin}}/cyclonetix validate {{dir}}

[doc("Format and autofix")]
[group("quality")]
fmt:
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

[doc("ruff (lint + format check) and mypy --strict")]
[group("quality")]
lint:
    {{bin}}/ruff format --check .
    {{bin}}/ruff check .
    {{bin}}/mypy

[doc("mypy --strict only")]
[group("quality")]
typecheck:
    {{bin}}/mypy

[doc("The whole test suite (real nats-server from the wheel; processes end to end)")]
[group("test")]
test *args:
    {{py}} -m pytest {{args}}

[doc("Pure and in-process tests only (no servers)")]
[group("test")]
test-unit *args:
    {{py}} -m pytest tests/unit {{args}}

[doc("Integration and end-to-end tests")]
[group("test")]
test-integration *args:
    {{py}} -m pytest -m "integration or e2e" {{args}}

[doc("Chaos suite: random faults over real processes, then the log's invariants (CI size; --long: bigger; --chaos-seed N: replay)")]
[group("test")]
[positional-arguments]
chaos *args:
    {{py}} -m pytest tests/chaos -m chaos "$@"

[doc("Every benchmark, one process each, at the README's sizes: bench-results.json and bench-plots/*.png (python -m bench.report --help)")]
[group("bench")]
bench *args:
    {{py}} -m bench.report {{args}}

[doc("Every benchmark at a tiny size (each still runs; no figures)")]
[group("bench")]
bench-quick *args:
    {{py}} -m bench.report --quick {{args}}

[doc("One benchmark by name into bench-results-NAME.json (just bench-one hop; names: python -m bench.report --list)")]
[group("bench")]
bench-one name *args:
    {{py}} -m bench.report --only {{name}} --out bench-results-{{name}}.json --no-plots {{args}}

[doc("Everything CI runs")]
[group("test")]
ci:
    bash .ci/run
