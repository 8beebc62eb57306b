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

[doc("Benchmarks, printed as JSON lines: core budgets, hop latency, throughput, agent kill, orchestrator recovery and takeover, read-model replay and lists, web, subject triggers")]
[group("bench")]
bench:
    {{py}} -m bench.definitions_bench
    {{py}} -m bench.fold_bench
    {{bin}}/cyclonetix bench latency --tasks 200 --json
    {{bin}}/cyclonetix bench throughput --tasks 5000 --agents 2 --json
    {{bin}}/cyclonetix bench projector-lag --tasks 5000 --agents 2 --json
    {{bin}}/cyclonetix bench projector-lag --tasks 5000 --agents 2 --json --read-model redis://127.0.0.1:6379/0
    {{bin}}/cyclonetix bench projector-lag --tasks 5000 --agents 2 --json --read-model postgresql://postgres@127.0.0.1:5432/postgres
    {{bin}}/cyclonetix bench agent-kill --rounds 5 --json
    {{bin}}/cyclonetix bench recovery --runs 1000 --json
    {{bin}}/cyclonetix bench takeover --rounds 5 --json
    {{py}} -m bench.read_model_memory_bench --runs 10000
    {{py}} -m bench.read_model_redis_bench --runs 10000
    {{py}} -m bench.read_model_postgres_bench --runs 10000
    {{py}} -m bench.web_bench --runs 100000 --tasks 200 --rounds 5 --json
    {{py}} -m bench.triggers_bench --triggers 1000 --json

[doc("Everything CI runs")]
[group("test")]
ci:
    bash .ci/run
