"""Structured configuration (Hydra). Unknown keys are errors; every default is commented.

The tree: ``RunConfig`` at the top, composed from ``conf/config.yaml`` and one suite file under
``conf/suite/``; command-line overrides such as ``model.sasrec.lr=3e-4`` or ``model.sasrec.layers=3``
apply last. Typed dataclasses below the CLI; nothing downstream sees a raw dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from baselines.bm25 import BM25Config
from baselines.hllm import HLLMConfig
from baselines.popularity import PopularityConfig
from baselines.query_pop import QueryPopConfig
from baselines.sasrec import SASRecConfig
from benchmark import device
from benchmark.data.adapt import QUERY_MODES, AdaptConfig
from benchmark.data.synthetic import SyntheticConfig
from benchmark.trainer import TrainConfig
from karma.model import KarmaConfig


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])  # HR@K / NDCG@K cut-offs, full catalog
    js_k: int = 50  # JS@K semantic probe depth (the paper's JS@50)
    tail_max_train: int = 5  # tail slice: test targets with at most this many training interactions
    selection_metric: str = "NDCG@10"  # validation metric for epoch/model selection

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or self.js_k < 1 or self.tail_max_train < 0:
            raise ValueError(f"eval.ks must be cut-offs >= 1, eval.js_k >= 1 and eval.tail_max_train >= 0, got "
                             f"ks={self.ks}, js_k={self.js_k}, tail_max_train={self.tail_max_train}")
        name, _, k = self.selection_metric.partition("@")
        if self.selection_metric not in ("MRR", "gAUC") and not (name in ("HR", "NDCG") and k.isdigit() and int(k) in self.ks):
            raise ValueError(f"eval.selection_metric must be MRR, gAUC, or HR@K / NDCG@K with K in eval.ks {self.ks}, "
                             f"got {self.selection_metric!r}")


@dataclass
class FunnelConfig:
    enabled: bool = True  # the funnel pass (benchmark.funnel.runs) after a suite's runs (text data)
    ctr_folds: int = 2  # CTR feature cross-fitted over this many folds of users
    ctr_epochs: int = 10  # CTR model epochs (early-stopped on validation AUC)
    n_boot: int = 2000  # bootstrap resamples for the paired deltas
    recall_max_lexical_hr: float = 0.5  # recall depth: the lexical channel alone recalls at most this on valid
    attention_items: int = 256  # catalog items (the first, by index) whose item-encoder attention is analysed
    probe_items: int = 64  # the same items' first ones, probed after every epoch (collapse at equal epochs)
    generator_updates: int = 3000  # Table 2: optimizer updates (batches of 256) fitting the generators on the
    # frozen (h, v_target) pairs; a fixed count, not epochs (a small catalog's epoch is a few batches)
    generator_samples: int = 8  # Table 2 mode/mean analysis: diffusion samples drawn per test impression
    generator_impressions: int = 512  # test impressions in the mode/mean analysis

    def __post_init__(self) -> None:
        if self.ctr_folds < 2:  # each fold's CTR model fits on the other folds' rows: one fold fits none
            raise ValueError(f"funnel.ctr_folds must be >= 2, got {self.ctr_folds}")
        for name in ("ctr_epochs", "n_boot", "attention_items", "probe_items", "generator_updates",
                     "generator_samples", "generator_impressions"):
            if getattr(self, name) < 1:  # 0 would fail late, after the runs trained (e.g. no generator fit)
                raise ValueError(f"funnel.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.recall_max_lexical_hr <= 1.0:
            raise ValueError(f"funnel.recall_max_lexical_hr must be in (0, 1], got {self.recall_max_lexical_hr}")


@dataclass
class ImagesConfig:
    fetch: bool = False  # download catalog image URLs into the cache (needs network); off: local files only
    timeout_s: float = 10.0  # socket timeout per image

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"images.timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class SearchConfig:
    enabled: bool = False  # run the tuning search before the seeds of each model/variant
    seed: int = 0  # the seed trials train with (scored on the validation split only)
    # model or model:variant -> {dotted config key: values}. Every model gets ``trials`` trials: a grid
    # whose product is larger is cut to a balanced fraction of it (benchmark.runner.grids.grid_trials).
    grids: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    trials: int = 4

    def __post_init__(self) -> None:
        if self.trials < 1 or self.seed < 0:
            raise ValueError(f"search.trials must be >= 1 and search.seed >= 0, got trials={self.trials}, "
                             f"seed={self.seed}")


@dataclass
class ModelsConfig:
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    query_pop: QueryPopConfig = field(default_factory=QueryPopConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    karma: KarmaConfig = field(default_factory=KarmaConfig)  # shared by action_llm and karma's variants
    hllm: HLLMConfig = field(default_factory=HLLMConfig)


@dataclass
class Scope:
    """Where one model runs within a suite, when not everywhere (an empty list: all of the suite's)."""

    datasets: list[str] = field(default_factory=list)  # names as in the suite's datasets
    modes: list[str] = field(default_factory=list)  # query modes


@dataclass
class RunConfig:
    suite: str = "smoke"  # set by the suite file
    suite_version: str = "0"  # bump in the suite file when its definition changes
    description: str = ""  # one line, shown by --help and in the leaderboard
    data_dir: str | None = None  # data root; None -> $KARMA_BENCH_DATA or the user cache dir
    results_dir: str = "results"  # records and figures go under here
    # per-epoch state of unfinished runs; None: the cache, one folder per results dir. A folder that
    # outlives the machine (synced or committed) lets a run resume on another machine
    checkpoint_dir: str | None = None
    # keep a finished run's last checkpoint (about 100 MB for an LLM run) after its record is written: a
    # later run of it under a looser stopping rule (patience, floor, cap) then trains on from its last
    # epoch instead of from the start (benchmark.trainer.reaches)
    keep_checkpoints: bool = False
    leaderboard: str = "leaderboard.md"  # regenerated from all records after every suite run
    datasets: list[str] = field(default_factory=list)  # names; "*" = every real set found under the data root
    models: list[str] = field(default_factory=list)  # keys of benchmark.models.MODELS
    seeds: list[int] = field(default_factory=lambda: [0])  # model seeds; data are identical across seeds
    # query modes (benchmark.data.adapt): a query-reading model runs in each one the dataset has;
    # query-blind models run once, in mode none, which stands for every mode
    modes: list[str] = field(default_factory=lambda: ["coarse"])
    # model name -> the datasets and modes it is planned on (unlisted models run everywhere): a model
    # that costs hours a run is planned only where the suite's budget reaches, not shown missing elsewhere
    scope: dict[str, Scope] = field(default_factory=dict)
    overwrite: bool = False  # re-run runs whose record exists
    # stop the suite (exit 2) at the first bad input record or failed run, instead of counting the record
    # or listing the run and finishing the rest
    strict: bool = False
    allow_download: bool = True  # fetch missing Amazon files (with checksums) when online
    threads: int = 2  # torch intra-op threads
    # where models compute (benchmark.device): cpu (every committed record), cuda, cuda:N or auto; not
    # part of a run's identity, like threads: the record's environment says where it ran
    device: str = "cpu"
    unit: int | None = None  # run only this unit of the plan, a (dataset, mode, model, variant) (set by --jobs)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelsConfig = field(default_factory=ModelsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    funnel: FunnelConfig = field(default_factory=FunnelConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in QUERY_MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty list of {', '.join(QUERY_MODES)}, got {self.modes}")
        for model, where in self.scope.items():
            bad = [m for m in where.modes if m not in QUERY_MODES]
            if bad:
                raise ValueError(f"scope.{model}.modes must be among {', '.join(QUERY_MODES)}, got {where.modes}")
        if self.threads < 1 or not self.seeds or min(self.seeds) < 0:  # numpy takes seeds >= 0 only
            raise ValueError(f"threads must be >= 1 and seeds a non-empty list of seeds >= 0, got "
                             f"threads={self.threads}, seeds={self.seeds}")
        device.check(self.device)


ConfigStore.instance().store(name="base_config", node=RunConfig)


def typed(cfg) -> RunConfig:
    """The composed Hydra config as the typed ``RunConfig`` every module below the CLI reads (its
    dataclasses validate their fields on the way: a bad value fails here, before any run)."""
    return cfg if isinstance(cfg, RunConfig) else OmegaConf.to_object(cfg)


def with_dotted(cfg, key: str, value):
    """A copy of a (nested) dataclass config with the dotted field ``key`` set to ``value``."""
    head, _, rest = key.partition(".")
    if not hasattr(cfg, head):
        raise KeyError(f"no config field {key!r}")
    return dataclasses.replace(cfg, **{head: with_dotted(getattr(cfg, head), rest, value) if rest else value})
