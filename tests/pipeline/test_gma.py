"""GMA port (pipeline/gma/): checkpoint keys, each building block against a direct computation, padding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.gma import (GMA, CheckpointMismatchError, estimate_flow, load_gma, pad_amounts, pad_images,
                          tf32_allowed, unpad, upsample_flow_convex)
from pipeline.gma.attention import Aggregate, Attention
from pipeline.gma.corr import CorrPyramid, coords_grid

# The official key list (a copy of the reference data in ../shared/reference/).
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "gma_state_dict.json"

torch.set_num_threads(1)


def reference_keys() -> dict:
    """The official checkpoint's key list (with `module.`), shapes, dtypes and aliases; skip if absent."""
    if not REFERENCE.is_file():
        pytest.skip(f"reference key list {REFERENCE} not available")
    return json.loads(REFERENCE.read_text())


def module_keys() -> dict:
    """The same layout read off GMA() itself: the fallback where the reference list is not checked out."""
    state = GMA().state_dict()
    keys = [{"name": "module." + name, "shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
            for name, value in state.items()]
    aliases = [[f"module.cnet.{layer}.0.norm3.{field}", f"module.cnet.{layer}.0.downsample.1.{field}"]
               for layer in ("layer2", "layer3")
               for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    return {"keys": keys, "aliases": aliases}


def random_official_state(gamma: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic random state dict with the official keys (`module.` prefix, aliases shared).

    Built from the reference key list; where that is not checked out (CI), from GMA()'s own keys, so
    the network tests still run (the key-list tests then skip)."""
    ref = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else module_keys()
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for entry in ref["keys"]:
        name, shape, dtype = entry["name"], entry["shape"], entry["dtype"]
        if name.endswith("num_batches_tracked"):
            value = torch.tensor(1000, dtype=torch.int64)
        elif name.endswith("rel_ind"):
            positions = torch.arange(shape[0])
            value = positions[None, :] - positions[:, None] + shape[0] - 1  # rel_ind[i, j] = j - i + 159
        elif name.endswith("running_var"):
            value = torch.rand(shape, generator=gen) + 0.5
        elif name.endswith("aggregator.gamma"):
            value = torch.full(shape, gamma)
        elif len(shape) >= 2:  # conv / embedding weights, scaled by fan-in so activations stay O(1)
            value = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        else:  # biases, BN weights and means
            value = 0.1 * torch.randn(shape, generator=gen)
        assert dtype == str(value.dtype).removeprefix("torch."), name
        state[name] = value
    for first, *others in ref["aliases"]:
        for other in others:
            state[other] = state[first]  # one tensor under both names, as in the checkpoints
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random official-format checkpoint, saved to a temporary file."""
    path = tmp_path_factory.mktemp("gma") / "gma-random.pth"
    torch.save(random_official_state(), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> GMA:
    """GMA loaded from the random checkpoint through load_gma."""
    return load_gma(checkpoint)


def frames(batch: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random uint8 frame and a copy shifted by (2, 3) px: (B, H, W, 3) each."""
    gen = np.random.default_rng(seed)
    coarse = gen.uniform(0, 255, (batch, height // 4 + 2, width // 4 + 2, 3)).astype(np.float32)
    t = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2),
                                        size=(height + 4, width + 4), mode="bilinear")
    big = t.permute(0, 2, 3, 1).numpy().round().astype(np.uint8)
    return big[:, 2:height + 2, 3:width + 3], big[:, :height, :width]


# --- checkpoint keys and loading -------------------------------------------------------------------

def test_state_dict_matches_official_key_list() -> None:
    ref = reference_keys()
    state = GMA().state_dict()
    assert list(state) == [entry["name"].removeprefix("module.") for entry in ref["keys"]]
    for entry in ref["keys"]:
        tensor = state[entry["name"].removeprefix("module.")]
        assert list(tensor.shape) == entry["shape"], entry["name"]
        assert str(tensor.dtype).removeprefix("torch.") == entry["dtype"], entry["name"]
    assert sum(p.numel() for p in GMA().parameters()) == ref["num_parameters"] == 5_879_873


def test_random_checkpoint_loads_strictly(checkpoint: Path, model: GMA) -> None:
    reference_keys()  # the point is loading the official key list: skip without it
    saved = random_official_state()
    loaded = model.state_dict()
    assert len(loaded) == len(saved) == 185
    for name, value in saved.items():
        assert torch.equal(loaded[name.removeprefix("module.")], value), name
    for first, *others in reference_keys()["aliases"]:  # aliases are one tensor in the module
        for other in others:
            assert (loaded[first.removeprefix("module.")].data_ptr()
                    == loaded[other.removeprefix("module.")].data_ptr())
    assert not model.training


def test_wrong_checkpoint_lists_missing_unexpected_and_misshaped(tmp_path: Path) -> None:
    state = random_official_state()
    names = [n for n in state if n.startswith("module.fnet.")][:12]
    for name in names:
        del state[name]
    state["module.extra.weight"] = torch.zeros(3)
    state["module.update_block.flow_head.conv2.bias"] = torch.zeros(5)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_gma(path)
    message = str(err.value)
    assert str(path) in message
    assert "12 missing keys" in message and "(2 more)" in message
    assert all(n.removeprefix("module.") in message for n in names[:10])
    assert names[10].removeprefix("module.") not in message
    assert "1 unexpected keys: extra.weight" in message
    assert "1 wrongly shaped keys: update_block.flow_head.conv2.bias: file (5,), model (2,)" in message


def test_unreadable_or_absent_checkpoint_names_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_gma(garbage)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_gma(tmp_path / "absent.pth")


# --- building blocks against direct computations ----------------------------------------------------

def bilinear_zero_padded(image: np.ndarray, x: float, y: float) -> float:
    """Bilinear value of image (H, W) at (x, y), pixel centres on integers, zero outside."""
    x0, y0 = math.floor(x), math.floor(y)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < image.shape[0] and 0 <= xx < image.shape[1]:
                total += wy * wx * image[yy, xx]
    return total


def test_correlation_lookup_equals_brute_force_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    batch, dim, height, width, levels, radius = 2, 6, 8, 9, 3, 2
    fmap1 = torch.randn(batch, dim, height, width, generator=gen)
    fmap2 = torch.randn(batch, dim, height, width, generator=gen)
    coords = coords_grid(batch, height, width, torch.device("cpu"))
    coords = coords + 3.0 * torch.randn(batch, 2, height, width, generator=gen)  # partly outside
    out = CorrPyramid(fmap1, fmap2, levels, radius)(coords).numpy()
    assert out.shape == (batch, levels * (2 * radius + 1) ** 2, height, width)

    f1, f2, c = fmap1.double().numpy(), fmap2.double().numpy(), coords.double().numpy()
    side = 2 * radius + 1
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                volume = np.einsum("d,dyx->yx", f1[b, :, i, j], f2[b]) / math.sqrt(dim)
                for level in range(levels):
                    if level:  # 2x2 average pooling, odd sizes floored
                        hh, ww = volume.shape[0] // 2, volume.shape[1] // 2
                        volume = volume[:2 * hh, :2 * ww].reshape(hh, 2, ww, 2).mean(axis=(1, 3))
                    x, y = c[b, 0, i, j] / 2**level, c[b, 1, i, j] / 2**level
                    for a in range(side):  # Δx is the slow index, Δy the fast one
                        for bb in range(side):
                            want = bilinear_zero_padded(volume, x + a - radius, y + bb - radius)
                            got = out[b, level * side * side + a * side + bb, i, j]
                            assert got == pytest.approx(want, abs=1e-4), (b, i, j, level, a, bb)


def test_correlation_channel_order_hand_worked() -> None:
    # fmap1 = 1 everywhere, fmap2 = one-hot at (row 5, column 2): corr is 1 at (5, 2) only, for every pixel.
    fmap1 = torch.ones(1, 1, 8, 8)
    fmap2 = torch.zeros(1, 1, 8, 8)
    fmap2[0, 0, 5, 2] = 1.0
    coords = coords_grid(1, 8, 8, torch.device("cpu"))
    out = CorrPyramid(fmap1, fmap2, num_levels=1, radius=4)(coords)
    # Query pixel (row 3, column 1): the peak is at dx = +1, dy = +2, i.e. channel (1+4)*9 + (2+4).
    window = out[0, :, 3, 1]
    assert window.argmax().item() == 5 * 9 + 6 and window.sum().item() == pytest.approx(1.0)


def test_convex_upsampling_equals_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    batch, height, width, factor = 2, 3, 4, 8
    flow = torch.randn(batch, 2, height, width, generator=gen)
    mask = torch.randn(batch, 9 * factor * factor, height, width, generator=gen)
    up = upsample_flow_convex(flow, mask, factor)
    assert up.shape == (batch, 2, factor * height, factor * width)
    want = torch.zeros_like(up, dtype=torch.float64)
    for n in range(batch):
        for y in range(height):
            for x in range(width):
                for a in range(factor):
                    for b in range(factor):
                        logits = [mask[n, k * factor * factor + a * factor + b, y, x].item() for k in range(9)]
                        weights = np.exp(logits) / np.exp(logits).sum()
                        for k in range(9):
                            dy, dx = k // 3 - 1, k % 3 - 1
                            if 0 <= y + dy < height and 0 <= x + dx < width:
                                want[n, :, factor * y + a, factor * x + b] += (
                                    weights[k] * factor * flow[n, :, y + dy, x + dx].double())
    torch.testing.assert_close(up.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_and_aggregation_equal_direct_computation(num_heads: int) -> None:
    gen = torch.Generator().manual_seed(3)
    dim, head_dim, height, width = 8, 4, 3, 5
    attention = Attention(dim, num_heads, head_dim, max_pos=16)
    aggregate = Aggregate(dim, num_heads, head_dim)
    assert (aggregate.project is None) == (num_heads * head_dim == dim)
    with torch.no_grad():
        for p in list(attention.parameters()) + list(aggregate.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen))
    context = torch.randn(1, dim, height, width, generator=gen)
    motion = torch.randn(1, dim, height, width, generator=gen)
    with torch.no_grad():
        attn = attention(context)
        out = aggregate(attn, motion)

    n_pix = height * width
    ctx = context[0].reshape(dim, n_pix).double()  # pixel p = row * width + column
    mot = motion[0].reshape(dim, n_pix).double()
    w_qk = attention.to_qk.weight[:, :, 0, 0].detach().double()
    w_v = aggregate.to_v.weight[:, :, 0, 0].detach().double()
    gamma = aggregate.gamma.item()
    mixed = torch.zeros(num_heads * head_dim, n_pix, dtype=torch.float64)
    for h in range(num_heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        q = w_qk[rows] @ ctx  # (d, N)
        k = w_qk[num_heads * head_dim:][rows] @ ctx
        for i in range(n_pix):
            scores = torch.tensor([float(q[:, i] @ k[:, j]) / math.sqrt(head_dim) for j in range(n_pix)])
            probs = scores.exp() / scores.exp().sum()
            torch.testing.assert_close(attn[0, h, i].double(), probs.double(), atol=1e-5, rtol=1e-5)
            values = w_v[rows] @ mot  # (d, N)
            mixed[rows, i] = (values * probs.double()[None, :]).sum(dim=1)
    if aggregate.project is not None:
        mixed = aggregate.project.weight[:, :, 0, 0].double() @ mixed
    want = mot + gamma * mixed
    torch.testing.assert_close(out[0].reshape(dim, n_pix).double(), want, atol=1e-4, rtol=1e-4)


# --- the whole network ------------------------------------------------------------------------------

def test_forward_shapes_and_finite(model: GMA) -> None:
    gen = torch.Generator().manual_seed(4)
    image1 = torch.rand(2, 3, 128, 136, generator=gen) * 255
    image2 = torch.rand(2, 3, 128, 136, generator=gen) * 255
    with torch.no_grad():
        flow_low, flow_up = model(image1, image2, iters=3)
        per_iter = model(image1, image2, iters=3, test_mode=False)
    assert flow_low.shape == (2, 2, 16, 17) and flow_up.shape == (2, 2, 128, 136)
    assert flow_low.dtype == flow_up.dtype == torch.float32
    assert torch.isfinite(flow_low).all() and torch.isfinite(flow_up).all()
    assert flow_up.abs().max() > 0
    assert len(per_iter) == 3 and torch.equal(per_iter[-1], flow_up)
    # each fine value is a convex mix of 8 * coarse neighbours (or 0 outside): bounded by 8 * max |flow_low|
    for channel in range(2):
        bound = 8 * flow_low[:, channel].abs().amax()
        assert flow_up[:, channel].abs().amax() <= bound * (1 + 1e-5)


def test_gamma_changes_output(checkpoint: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    image1 = torch.rand(1, 3, 128, 128, generator=gen) * 255
    image2 = torch.rand(1, 3, 128, 128, generator=gen) * 255
    net = load_gma(checkpoint)
    flows = {}
    for gamma in (0.0, 0.5):
        with torch.no_grad():
            net.update_block.aggregator.gamma.fill_(gamma)
            flows[gamma] = net(image1, image2, iters=2)[1]
    assert (flows[0.0] - flows[0.5]).abs().max() > 1e-3
    with torch.no_grad():  # with gamma = 0 the attention path is bypassed: to_v has no effect
        net.update_block.aggregator.gamma.zero_()
        net.update_block.aggregator.to_v.weight.mul_(3.0)
        assert torch.equal(net(image1, image2, iters=2)[1], flows[0.0])


def test_forward_rejects_unpadded_sizes(model: GMA) -> None:
    with pytest.raises(ValueError, match="multiples of 8, each at least 128"):
        model(torch.zeros(1, 3, 128, 132), torch.zeros(1, 3, 128, 132))
    with pytest.raises(ValueError, match="got 64 x 128"):
        model(torch.zeros(1, 3, 64, 128), torch.zeros(1, 3, 64, 128))


# --- padding and estimate_flow ----------------------------------------------------------------------

@pytest.mark.parametrize(("size", "want"), [
    ((436, 1024), (0, 0, 2, 2)),  # the official Sintel example
    ((64, 64), (32, 32, 32, 32)),  # each side raised to 128
    ((37, 53), (37, 38, 45, 46)),  # odd: the extra pixel goes right / bottom
    ((131, 201), (3, 4, 2, 3)),
])
def test_pad_amounts(size: tuple[int, int], want: tuple[int, int, int, int]) -> None:
    left, right, top, bottom = pad_amounts(*size, min_size=128)
    assert (left, right, top, bottom) == want
    height, width = size[0] + top + bottom, size[1] + left + right
    assert height % 8 == width % 8 == 0 and height >= 128 and width >= 128
    image = torch.arange(size[0] * size[1], dtype=torch.float32).reshape(1, 1, *size)
    padded = pad_images(image, want)
    assert padded.shape == (1, 1, height, width)
    assert torch.equal(unpad(padded, want), image)
    assert torch.equal(padded[..., 0, 0], image[..., 0, 0])  # replicate padding
    assert torch.equal(padded[..., -1, -1], image[..., -1, -1])


def test_estimate_flow_pads_runs_and_crops(model: GMA) -> None:
    frames_t, frames_t1 = frames(2, 37, 53, seed=6)
    flow = estimate_flow(model, frames_t, frames_t1, iters=2)
    assert isinstance(flow, np.ndarray) and flow.dtype == np.float32 and flow.shape == (2, 37, 53, 2)
    assert np.isfinite(flow).all()

    pads = pad_amounts(37, 53, model.min_size)
    image1 = pad_images(torch.from_numpy(frames_t).permute(0, 3, 1, 2).float(), pads)
    image2 = pad_images(torch.from_numpy(frames_t1).permute(0, 3, 1, 2).float(), pads)
    with torch.no_grad():
        flow_up = model(image1, image2, iters=2)[1]
    left, _, top, _ = pads
    want = flow_up[:, :, top:top + 37, left:left + 53].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(flow, want, atol=1e-5)

    as_tensor = estimate_flow(model, torch.from_numpy(frames_t).float(), torch.from_numpy(frames_t1), iters=2)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor.numpy(), flow, atol=1e-5)


def test_estimate_flow_bfloat16_autocast_runs(model: GMA) -> None:
    frames_t, frames_t1 = frames(1, 64, 64, seed=7)
    flow32 = estimate_flow(model, frames_t, frames_t1, iters=1)
    flow16 = estimate_flow(model, frames_t, frames_t1, iters=1, dtype="bfloat16")
    assert flow16.dtype == np.float32 and np.isfinite(flow16).all()
    assert not np.array_equal(flow16, flow32)  # autocast really ran in lower precision
    assert np.abs(flow16 - flow32).mean() < 0.1 * np.abs(flow32).mean() + 0.05


def test_autocast_attention_is_converted_once_not_per_iteration(model: GMA) -> None:
    """Under bfloat16 autocast the (B, heads, N, N) attention, the largest tensor of the update (N = h*w at 1/8
    resolution: ~0.8 GB per 720p pair in float32), goes through one dtype conversion per forward pass: the
    profiler sees one aten::to of that shape over 2 refinement iterations (the aggregation used to do one in each)."""
    image1, image2 = (torch.from_numpy(f).permute(0, 3, 1, 2).float() for f in frames(1, 128, 128, seed=5))
    n = (128 // 8) ** 2
    with torch.profiler.profile(record_shapes=True) as prof, torch.inference_mode():
        model(image1, image2, iters=2, autocast_dtype=torch.bfloat16)
    conversions = [e for e in prof.events() if e.name == "aten::to" and e.input_shapes
                   and list(e.input_shapes[0][-2:]) == [n, n]]
    assert len(conversions) == 1, [e.input_shapes[0] for e in conversions]


@pytest.mark.parametrize("tf32", [False, True])
def test_estimate_flow_sets_tf32_for_its_call_only(model: GMA, tf32: bool) -> None:
    """flow.gma.tf32: the network runs with CUDA matmul and cuDNN TF32 both set to the flag (PyTorch's defaults
    differ: matmul off, cuDNN on); the caller's settings are back afterwards, also after an error in the block."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    seen = []
    hook = model.fnet.register_forward_hook(
        lambda *_: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
    try:
        estimate_flow(model, *frames(1, 128, 128, seed=2), iters=1, tf32=tf32)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        with pytest.raises(RuntimeError, match="inside"), tf32_allowed(tf32):
            raise RuntimeError("inside")
    finally:
        hook.remove()
    assert seen == [(tf32, tf32)]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_estimate_flow_rejects_bad_input(model: GMA, checkpoint: Path) -> None:
    frames_t, frames_t1 = frames(1, 16, 16, seed=8)
    with pytest.raises(ValueError, match="frames_t must be"):
        estimate_flow(model, frames_t[..., :2], frames_t1[..., :2])
    with pytest.raises(ValueError, match=r"frames_t1 values must lie in \[0, 255\]"):
        estimate_flow(model, frames_t, frames_t1.astype(np.float32) * 2)
    with pytest.raises(ValueError, match="flow.gma.dtype"):
        estimate_flow(model, frames_t, frames_t1, dtype="float64")
    training = load_gma(checkpoint).train()
    with pytest.raises(ValueError, match="eval mode"):
        estimate_flow(training, frames_t, frames_t1)
