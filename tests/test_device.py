"""``device=``: the setting, and the CUDA path checked without a GPU.

No GPU is needed: the models run under PyTorch's ``FakeTensorMode`` with their weights and batches as
fake CUDA tensors, which computes no values but propagates devices and raises on any op that mixes
cuda and cpu (a tensor created without ``device=``, a CPU random draw never moved). Values that
control the Python flow (``mask.any()``, boolean indexing, ``unique``) have no data under fake
tensors, so ``_AsIfAllSet`` answers them as if every element were set and every item distinct: the
shapes stay consistent and every branch that needs a value still runs.
"""

import contextlib
import dataclasses

import pytest
import torch
from test_karma_model import _log
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from baselines.hllm import HLLM, HLLMConfig
from baselines.sasrec import SASRec, SASRecConfig
from benchmark import device as dev
from benchmark.seed import seed_everything
from benchmark.trainer import TrainConfig, _loader
from karma.model import MULTIMODAL_VARIANTS, VARIANTS, ContinuousTokenModel, KarmaConfig

aten = torch.ops.aten
# bf16 autocast asks for a real CUDA context; under fake CUDA tensors it is (rightly) switched off
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")


def _all_set(x: torch.Tensor) -> torch.Tensor:
    """nonzero(x) as if every element of x were set: (x.numel(), x.dim()) indices."""
    grids = torch.meshgrid(*[torch.arange(n, device=x.device) for n in x.shape], indexing="ij")
    return torch.stack(grids, -1).reshape(-1, x.dim())


class _AsIfAllSet(TorchDispatchMode):
    """Concrete answers to the data-dependent ops a fake tensor cannot answer."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:  # bool(t), int(t), float(t)
            return True if args[0].dtype == torch.bool else 1
        if func is aten.nonzero.default:
            return _all_set(args[0])
        if func is aten._unique2.default:  # every element distinct: (values, inverse, counts)
            flat = args[0].reshape(-1)
            return flat.clone(), torch.arange(flat.numel(), device=flat.device).reshape(args[0].shape), \
                torch.ones_like(flat)
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            x, indices, *rest = args
            if any(i is not None and i.dtype == torch.bool for i in indices):
                expanded = []
                for i in indices:
                    expanded.extend(_all_set(i).unbind(1) if i is not None and i.dtype == torch.bool else [i])
                return func(x, expanded, *rest, **kwargs)
        return func(*args, **kwargs)


def _fake_cuda_tensor(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")


@contextlib.contextmanager
def _on_fake_cuda(model: torch.nn.Module):
    """``model``'s parameters and buffers as fake CUDA tensors, for the duration of the block."""
    with FakeTensorMode(allow_non_fake_inputs=True), _AsIfAllSet():
        model._apply(_fake_cuda_tensor)
        yield


def _first_batch(model, examples):
    """The trainer's first batch of ``examples``, collated on the CPU (before the model moves)."""
    loader = _loader(examples, model, TrainConfig(batch_size=4, progress=False), torch.Generator().manual_seed(0))
    return next(iter(loader))


def _step(model, batch):
    """A training step's forward as the trainer runs it: the batch moved to the model's device, the
    losses drawn with the trainer's CPU generator. (Not the backward: autograd's engine needs a real
    CUDA context; gradients live where their parameters do.)"""
    terms = model.losses(dev.to_device(batch, dev.module_device(model)), torch.Generator().manual_seed(0))
    assert {t.device.type for t in terms.values()} == {"cuda"}
    return terms


def _karma(variant: str) -> ContinuousTokenModel:
    spec = {**VARIANTS, **MULTIMODAL_VARIANTS}[variant]
    cfg = dataclasses.replace(KarmaConfig(tiny=True, retrieval_dim=16, item_tokens=8, text_tokens=6), **spec)
    seed_everything(0)
    return ContinuousTokenModel(_log(), cfg)


@pytest.mark.parametrize("variant", ["action_only", "karma", "objective_diffusion", "objective_mse"])
def test_karma_trains_and_embeds_on_cuda_without_touching_the_cpu(variant):
    log = _log()
    model = _karma(variant)
    batch = _first_batch(model, model.train_dataset(log, torch.Generator().manual_seed(0)))
    with _on_fake_cuda(model):
        assert set(_step(model, batch)) >= {"action"}
        model.eval()
        items = model.item_embeddings(log)
        users = model.user_embeddings(log, log.split("test"))
        assert items.device.type == users.device.type == "cuda"
        assert items.shape == (log.n_items, 16) and users.shape == (len(log.split("test")), 16)


def test_karma_warmup_stage_and_generators_on_cuda():
    log = _log()
    model = _karma("generators")
    (_, items, _), = model.stages(log, torch.Generator())
    model.train_dataset(log, torch.Generator())
    batch = _first_batch(model, items)
    with _on_fake_cuda(model):
        assert set(_step(model, batch)) == {"warmup"}
        h = torch.zeros(4, model.user_llm.hidden_size, device="cuda")
        v = torch.zeros(4, 16, device="cuda")
        noise = torch.Generator().manual_seed(0)  # fit_generators' CPU stream (its backward needs real CUDA)
        losses = {k: model.heads[k].loss(v, h, generator=noise) for k in ("gen_diffusion", "gen_flow")}
        generated = model.generated_user_embeddings(log, log.split("test"), samples=2)
        attention, mask = model.item_encoder_attention(torch.arange(3, device="cuda"))
    assert {t.device.type for t in [*losses.values(), *generated.values()]} == {"cuda"}
    assert attention.device.type == mask.device.type == "cuda"


def test_hllm_and_sasrec_train_and_embed_on_cuda():
    log = _log()
    seed_everything(0)
    hllm = HLLM(log, HLLMConfig(tiny=True, item_llm_tokens=8, num_negatives=4))
    seed_everything(0)
    sasrec = SASRec(log.n_items, SASRecConfig(hidden=8, heads=2, layers=1, max_len=6, loss="sampled", n_negatives=4))
    for model in (hllm, sasrec):
        batch = _first_batch(model, model.train_dataset(log, torch.Generator().manual_seed(0)))
        with _on_fake_cuda(model):
            _step(model, batch)
            model.eval()
            users = model.user_embeddings(log, log.split("test"))
            assert model.item_embeddings(log).device.type == users.device.type == "cuda"


def test_the_fake_cuda_check_can_fail():
    """The step without the trainer's ``to_device`` (CPU batch, CUDA model) is caught: the checks
    above are not vacuous."""
    model = _karma("action_only")
    batch = _first_batch(model, model.train_dataset(_log(), torch.Generator().manual_seed(0)))
    with _on_fake_cuda(model), pytest.raises(FakeTensorDeviceMismatchError):
        model.losses(batch, torch.Generator().manual_seed(0))


def test_device_setting_is_checked_and_resolved():
    assert dev.resolve("cpu") == torch.device("cpu")
    assert dev.resolve("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cpu:1", ""):
        with pytest.raises(ValueError, match="device must be one of cpu, cuda, auto"):
            dev.check(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            dev.check("cuda")
    batch = dev.to_device({"ids": torch.arange(3), "name": "x"}, torch.device("cpu"))
    assert batch["name"] == "x" and torch.equal(batch["ids"], torch.arange(3))


def test_place_moves_modules_only_and_synchronize_is_a_no_op_on_the_cpu():
    module, rule = torch.nn.Linear(2, 2), object()
    assert dev.place(module, "cpu") == torch.device("cpu") and dev.module_device(module).type == "cpu"
    assert dev.place(rule, "auto") == dev.resolve("auto")  # a no-learning rule is left as it is
    dev.synchronize(torch.device("cpu"))
    with pytest.raises(ValueError, match="device must be one of"):
        dev.place(module, "tpu")
