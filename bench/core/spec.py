"""What a run is: `RunSpec`, the one constructor `make_spec`, and the checks on every value a user gives.

Every command that trains (`run`, `run --all`, `tune`'s trials and final run, `profile`) builds its specs
with `make_spec`, so one budget gets one label and one run id whichever command ran it:

- the budget (epochs, patience, users) comes from the profile (default `paper`), each part overridable;
- the label is the name of the profile whose budget that is (the asked profile first), else `custom`.
  `run --profile smoke --epochs 1` is therefore `custom`, and a bare `run` (paper budget) is `paper`;
- the method's config is resolved once, here (paper or tuned values plus `--set` overrides,
  bench/core/configs.py): the spec holds it, its provenance and the run id that follows from it, and every
  later step (the grid's skip test, the scheduler, the training loop, the record) reads them from the spec.

Nothing here knows argparse: `bench/cli.py` turns argv into the typed arguments of `make_spec`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import configs, data, identity, paths
from bench.core.devices import check_device
from bench.core.errors import BenchError
from bench.core.evaluate import PROTOCOLS
from bench.core.profiles import PROFILES, Profile, get_profile
from methods import MethodConfig

# Where records, studies, tuned configs and tables go unless --results says otherwise: $BENCH_RESULTS, else
# results/ of the working directory (the tests point it at a temporary folder, so that they never write
# into the committed results).
DEFAULT_RESULTS = Path(os.environ.get("BENCH_RESULTS") or "results").resolve()
# The checkout's own records (measured runs, committed): the time-boxed grid and `bench status` read their
# seconds per epoch as estimates wherever the results folder has none of its own (an installed package has
# none, and estimates then come from the results folder alone).
COMMITTED_RESULTS = data.REPO_ROOT / "results"

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
EXECUTORS = ("ray", "local")  # where grid runs and study workers run: Ray tasks (bench/campaign/executors.py) or here
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; the record's JSON keeps them exact below 2^63


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result (and a few things that only say how to run it).

    Build it with `make_spec`, which checks every value and resolves the config; the dataclass itself
    trusts its caller. `run_id` follows from the other fields when the spec is made, so a copy made with
    `dataclasses.replace` (the grid pins the device, adds a deadline) carries the id of what it will run.
    """

    method: str
    dataset: str
    config: MethodConfig  # resolved: the values the method trains with
    seed: int = 1
    profile: str = "custom"  # the budget's label (see module doc), not necessarily the profile asked for
    epochs: int = 300
    patience: int = 40
    max_users: int | None = None
    max_steps: int | None = None  # training steps per epoch at most (None: every example once)
    protocol: str = "reference"
    config_source: str = "paper"  # where the config came from: paper | tuned | custom (with --set overrides)
    # Execution options: the faithful defaults are fp32 and eager. Other values can change the numbers, so
    # they enter the run's identity (and only then: ids of faithful runs stay what they always were).
    precision: str = "fp32"
    compile: str = "off"
    # How to run, not what: excluded from the run's identity.
    device: str = "auto"
    num_threads: int | None = None
    save_checkpoint: str | None = None
    concurrency: int = 1  # runs the grid puts on the machine at once; the record counts the host (context.py)
    # Campaigns (bench/core/checkpoints.py, bench/campaign/schedule.py): how to run, not what, so not in the run's identity.
    checkpoint_every: int | None = None  # save a mid-run checkpoint every this many epochs
    checkpoint_dir: str | None = None  # where mid-run checkpoints live (<dir>/<run_id>/last.pt); None: none
    deadline: float | None = None  # when (on the run's clock, time.time) it stops after an epoch, "interrupted"
    probe: bool = False  # no earlier record to estimate from: after its first epoch, stop unless it can finish
    run_id: str = field(init=False, repr=False)  # bench/core/identity.py

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_id", identity.identity_of(self, self.config))

    def identity(self) -> dict:
        keys = ("method", "dataset", "seed", "profile", "epochs", "patience", "max_users", "max_steps", "protocol")
        return {k: getattr(self, k) for k in keys}

    def config_values(self) -> dict:
        return self.config.to_dict()

    def fields(self) -> dict:
        """The spec as a record keeps it (its `spec` section): every field but the config and the id, which
        the record holds at its top level."""
        kept = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in ("config", "run_id")}
        return kept | {k: paths.portable(kept[k]) for k in ("checkpoint_dir", "save_checkpoint")}


# ------------------------------------------------------------------------------------------------ checks
def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise BenchError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_positive(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise BenchError(f"{option} must be >= 1, got {value}")


def check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise BenchError(f"--seed must be in 0..2^63-1, got {seed}")
    return seed


def budget_label(profile: Profile, epochs: int, patience: int, max_users: int | None,
                 max_steps: int | None = None) -> str:
    """The profile whose budget this is (the asked one first), else "custom"."""
    budget = (epochs, patience, max_users, max_steps)
    for candidate in (profile, *PROFILES.values()):
        if (candidate.epochs, candidate.patience, candidate.max_users, candidate.max_steps) == budget:
            return candidate.name
    return "custom"


# ------------------------------------------------------------------------------------------ constructor
def make_spec(
    method: str,
    dataset: str,
    *,
    # what to run: the budget, the seed, the protocol, the config
    profile: str | Profile | None = None, epochs: int | None = None, patience: int | None = None,
    max_users: int | None = None, max_steps: int | None = None, seed: int | None = None, protocol: str = "reference",
    config_source: str = "paper", overrides: dict | None = None,
    # execution options that can change the numbers (they enter the run id unless faithful)
    precision: str = "fp32", compile: str = "off",
    # how to run it
    device: str = "auto", num_threads: int | None = None, save_checkpoint: str | None = None, concurrency: int = 1,
    checkpoint_every: int | None = None, checkpoint_dir: str | None = None,
) -> RunSpec:
    """A validated spec: the profile's budget with the given parts replaced, every name and value checked,
    the config resolved from `config_source` (paper | tuned) and `overrides` (`--set` pairs).

    Raises BenchError (one line) on an unknown method, dataset, profile, protocol, device or option, a value
    out of range, or a config override the method does not accept, before any data is loaded.
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile or "paper")
    for option, value in (("--epochs", epochs), ("--patience", patience), ("--max-users", max_users), ("--max-steps", max_steps),
                          ("--threads", num_threads), ("--checkpoint-every", checkpoint_every)):
        check_positive(option, value)
    epochs = prof.epochs if epochs is None else epochs
    patience = prof.patience if patience is None else patience
    max_users = prof.max_users if max_users is None else max_users
    max_steps = prof.max_steps if max_steps is None else max_steps
    seed = check_seed(prof.seeds[0] if seed is None else seed)
    configs.method_class(method)
    data.load_manifest(dataset)
    for what, value, choices in (("evaluation protocol", protocol, PROTOCOLS), ("precision", precision, PRECISIONS),
                                 ("compile mode", compile, COMPILE_MODES)):
        check_choice(what, value, choices)
    check_device(device)
    # the one resolution of the run's config: an unknown source or a bad --set fails here, before any data
    config, config_label = configs.resolve_config(method, dataset, config_source, dict(overrides or {}))
    return RunSpec(
        method=method,
        dataset=dataset,
        config=config,
        seed=seed,
        profile=budget_label(prof, epochs, patience, max_users, max_steps),
        epochs=epochs,
        patience=patience,
        max_users=max_users,
        max_steps=max_steps,
        protocol=protocol,
        config_source=config_label,
        precision=precision,
        compile=compile,
        device=device,
        num_threads=num_threads,
        save_checkpoint=save_checkpoint,
        concurrency=concurrency,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_dir,
    )
