"""The pyiqa metrics as step 7.3 uses them: created once, put on one 0-100 scale,
MUSIQ given fused attention and its own preprocessing outside the net.

Every metric is put on 0-100 before categories or "both" combine them: MUSIQ as
is, CLIPIQA x 100, any other metric through its documented ``score_range``
(``(raw - lo) / (hi - lo) * 100``), inverted when pyiqa says ``lower_better``.
Weights come from torch's hub folder (``weights_dir`` sets it); a file that is
missing and cannot be fetched stops the step with one line naming the file,
where to put it and where to download it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import console
from ..console import StepFailed, UsageError, log, one_line
from ..i18n import _

# Hidden test hook (documented in docs/architecture.md): "0" builds the
# metrics with random weights (``pretrained=False``) so MUSIQ's real compute
# runs on a machine that cannot download its weights.
PRETRAINED_ENV = "YR_PYIQA_PRETRAINED"


@dataclass(frozen=True)
class Scale:
    """How one metric's raw score maps onto 0-100 (higher is better)."""

    low: float
    high: float
    lower_better: bool

    def apply(self, raw: float) -> float:
        value = (raw - self.low) / (self.high - self.low) * 100.0
        return 100.0 - value if self.lower_better else value

    def describe(self, name: str) -> str:
        if (self.low, self.high) == (0.0, 100.0) and not self.lower_better:
            return f"{name}: as is"
        if self.low == 0.0 and not self.lower_better:
            return f"{name}: x{100.0 / self.high:g}"
        text = f"{name}: ({self.low:g}..{self.high:g}) to 0..100"
        return text + ", inverted (lower is better)" if self.lower_better else text


def parse_score_range(text: str | None, lower_better: bool) -> Scale | None:
    """pyiqa's ``score_range`` ("~0, ~100", "0, 1") as a :class:`Scale`, or None."""
    if not text:
        return None
    try:
        low, high = (float(part.strip().lstrip("~")) for part in str(text).split(","))
    except ValueError:
        return None
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return None
    return Scale(low, high, lower_better)


# pyiqa's DEFAULT_CONFIGS["piqe"]: score_range "0, 100", lower_better (a test checks)
PIQE_SCALE = Scale(0.0, 100.0, lower_better=True)


class WeightsMissingError(StepFailed):
    """The step cannot run this metric here: its weights are absent (one line why)."""


class WeightsMissing(Exception):
    def __init__(self, url: str, target: str) -> None:
        super().__init__(url)
        self.url = url
        self.target = target


@dataclass
class Metric:
    name: str
    model: Any
    scale: Scale | None
    batchable: bool = True
    is_musiq: bool = False
    # the same numbers as ``model``, faster (:class:`FastPiqe`, :class:`MusiqForward`,
    # which takes MUSIQ's patch sequences); None: ``model`` itself
    fast: Any = None

    def __post_init__(self) -> None:
        if self.is_musiq and self.fast is None:
            self.fast = MusiqForward(self.model.net, low_precision=False)

    def __call__(self, batch: Any) -> Any:
        return (self.fast or self.model)(batch)


def _guard_downloads(weights_dir: Path | None) -> None:
    """Point pyiqa, CLIP and torchvision at ``weights_dir`` and turn a failed download
    into :class:`WeightsMissing` (the URL and the path the file belongs at)."""
    import torch.hub
    from pyiqa.archs import clip_model
    from pyiqa.utils import download_util

    if weights_dir is not None:
        torch.hub.set_dir(str(weights_dir))
        download_util.DEFAULT_CACHE_DIR = str(weights_dir / "pyiqa")
    if getattr(download_util, "_yr_guarded", False):
        return

    def wrap(original: Any) -> Any:
        def guarded(url: str, dst: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return original(url, dst, *args, **kwargs)
            except Exception as exc:
                raise WeightsMissing(url, dst) from exc

        return guarded

    def guarded_clip(url: str, root: str) -> Any:
        try:
            return original_clip(url, root)
        except Exception as exc:
            raise WeightsMissing(url, os.path.join(root, os.path.basename(url))) from exc

    original_clip = clip_model._download
    download_util.download_url_to_file = wrap(download_util.download_url_to_file)
    torch.hub.download_url_to_file = wrap(torch.hub.download_url_to_file)
    clip_model._download = guarded_clip
    download_util._yr_guarded = True


def create_metrics(
    names: Sequence[str],
    device: Any,
    weights_dir: Path | None,
    *,
    pretrained: bool = True,
    precision: str = "auto",
) -> list[Metric]:
    """pyiqa metrics, created once. Unknown names and missing weights end the step.
    ``pretrained=False`` builds them with random weights (see :data:`PRETRAINED_ENV`);
    ``precision="auto"`` lets MUSIQ use bfloat16 where :class:`MusiqForward` allows."""
    metrics = []
    for name in names:
        if name == "piqe" and device.type == "cpu":
            # in-house, the same numbers as pyiqa's: no import of pyiqa (nor of the
            # torchvision and torch._dynamo it pulls in), ~2.5 s per process
            console.console.print(
                _("Loading {name} on {device} ...").format(name=name, device=device)
            )
            metrics.append(Metric(name, None, PIQE_SCALE, fast=FastPiqe.create()))
            continue
        import pyiqa
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        _guard_downloads(weights_dir)
        config = DEFAULT_CONFIGS.get(name)
        if config is None:
            raise UsageError(
                _("unknown pyiqa metric {name!r} (--model); see pyiqa.list_models('NR')").format(
                    name=name
                )
            )
        if config.get("metric_mode") != "NR":
            raise UsageError(
                _("{name} needs a reference image; --model takes no-reference metrics").format(
                    name=name
                )
            )
        kwargs = {} if pretrained or not _takes_pretrained(config) else {"pretrained": False}
        console.console.print(_("Loading {name} on {device} ...").format(name=name, device=device))
        try:
            model = pyiqa.create_metric(name, device=device, as_loss=False, **kwargs)
        except WeightsMissing as exc:
            file_name = os.path.basename(exc.url.split("?")[0])
            sub = Path(exc.target).parent.name
            raise WeightsMissingError(
                _(
                    "weights for {name} are missing and cannot be downloaded: {file}. "
                    "Put it at {target} (or at DIR/{sub}/{file} with --weights-dir DIR); "
                    "download it on a machine with internet from {url}. "
                    "Or use --model piqe, which needs no weights"
                ).format(name=name, file=file_name, target=exc.target, sub=sub, url=exc.url)
            ) from exc
        except Exception as exc:
            log.exception("cannot create %s", name)
            raise StepFailed(
                _("cannot create metric {name}: {reason}").format(name=name, reason=one_line(exc))
            ) from exc
        scale = parse_score_range(model.score_range, bool(model.lower_better))
        if scale is None:
            console.console.print(
                "[yellow]"
                + _(
                    "{name} has no documented score range; raw scores are used "
                    "(prefer --percentiles)"
                ).format(name=name)
                + "[/yellow]"
            )
        is_musiq = type(model.net).__name__ == "MUSIQ"
        fast: Any = None
        if is_musiq:
            fast_attention(model.net)
            fast = MusiqForward(model.net, low_precision=precision == "auto" and bf16_pays(device))
        elif type(model.net).__name__ == "PIQE" and device.type == "cpu":
            fast = FastPiqe.create()
        metrics.append(Metric(name, model, scale, is_musiq=is_musiq, fast=fast))
    return metrics


def weights_problem(
    names: Sequence[str], weights_dir: Path | None, *, pretrained: bool = True
) -> str | None:
    """Why these metrics cannot run here for want of weights (one line), or None.
    Builds them once on the CPU, which is what finds the files pyiqa needs."""
    import torch

    try:
        create_metrics(names, torch.device("cpu"), weights_dir, pretrained=pretrained)
    except WeightsMissingError as exc:
        return str(exc)
    return None


def _takes_pretrained(config: dict) -> bool:
    import inspect

    from pyiqa import archs
    from pyiqa.utils.registry import ARCH_REGISTRY

    kind = config["metric_opts"]["type"]
    if kind not in ARCH_REGISTRY:
        archs._lazy_import_arch(kind)  # pyiqa registers an architecture on first use
    arch = ARCH_REGISTRY.get(kind)
    return "pretrained" in inspect.signature(arch.__init__).parameters


def fast_attention(net: Any) -> None:
    """Give this MUSIQ net's attention layers torch's fused attention.

    pyiqa computes ``softmax(q @ k.T + mask * -1e3) @ v`` in full; with the mask as
    a boolean key mask ``scaled_dot_product_attention`` gives the same numbers for
    every token that is not padding (exp(-1e3) is 0 in float32, and padded tokens
    never reach the output) and runs ~1.7x faster on the CPU, more on a GPU. Only
    the instances of this net are changed, never pyiqa's class.
    """
    import types

    from pyiqa.archs.musiq_arch import MultiHeadAttention

    for module in net.modules():
        if isinstance(module, MultiHeadAttention) and module.attn_drop.p == 0:
            module.forward = types.MethodType(_fused_attention, module)


def _fused_attention(self: Any, x: Any, mask: Any = None) -> Any:
    import torch.nn.functional as F

    batch, tokens, width = x.shape
    heads = self.num_heads

    def split(t: Any) -> Any:
        return t.reshape(batch, tokens, heads, width // heads).transpose(1, 2)

    keep = None if mask is None else mask.bool().reshape(batch, 1, 1, tokens)
    out = F.scaled_dot_product_attention(
        split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=keep
    )
    return self.out_drop(self.out(out.transpose(1, 2).reshape(batch, tokens, width)))


class Preprocessed:
    """The MUSIQ net, seen with ``training = True`` so its forward takes patches."""

    training = True

    def __init__(self, net: Any) -> None:
        self._net = net

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)


BF16_TOLERANCE = 0.05


def bf16_pays(device: Any) -> bool:
    """bfloat16 is only faster on CPUs with bfloat16 units (AVX512-BF16, AMX); GPUs keep
    float32 here (that path has not been measured)."""
    import torch

    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _in_float32(module: Any) -> None:
    """Run this module instance in float32 even inside a bfloat16 autocast region."""
    import torch

    original = module.forward

    def forward(x: Any) -> Any:
        with torch.autocast(x.device.type, enabled=False):
            return original(x.float())

    module.forward = forward


class MusiqForward:
    """MUSIQ on patch sequences that are already its own preprocessing
    (:func:`musiq_patches`), in float32 or, where it pays and stays exact enough,
    in bfloat16.

    bfloat16 (autocast: the convolutions, linear layers and attention; the residual
    stream, the norms, the final norm and the head stay float32) is ~2x faster on a
    CPU with AMX. It is checked, not assumed: the first image of the first batch is
    scored both ways; if the scores differ by more than :data:`BF16_TOLERANCE` (0.05,
    half of the 0.1 the issue allows) the run stays in float32. That image keeps its
    float32 score. The check costs one float32 image, not a batch scored twice, and
    the other worker threads do not wait for it: they score in bfloat16 meanwhile and
    score again in float32 only if the check chose float32.
    """

    def __init__(self, net: Any, *, low_precision: bool) -> None:
        self.net = net
        self.bf16: bool | None = None if low_precision else False
        self.difference: float | None = None
        self._deciding = threading.Lock()  # the worker threads decide once, together
        if low_precision:
            _in_float32(net.transformer_encoder.encoder_norm)
            _in_float32(net.head)

    def __call__(self, patches: Any) -> Any:
        if self.bf16 is None:
            if self._deciding.acquire(blocking=False):
                try:
                    if self.bf16 is None:
                        return self._decide(patches)
                finally:
                    self._deciding.release()
            else:  # another thread is checking: bfloat16 meanwhile, kept if it is chosen
                low = self._run(patches, bf16=True)
                with self._deciding:
                    pass
                if self.bf16:
                    return low
        return self._run(patches, bf16=bool(self.bf16))

    def _decide(self, patches: Any) -> Any:
        """Score the first image both ways and choose; it keeps its float32 score, the
        rest of the batch is scored as chosen."""
        import torch

        exact = self._run(patches[:1], bf16=False)
        self.difference = float((self._run(patches[:1], bf16=True) - exact).abs().max())
        chosen = self.difference <= BF16_TOLERANCE
        log.info("MUSIQ bfloat16 vs float32 on the first image: %.5f", self.difference)
        console.console.print(
            _("MUSIQ: bfloat16 (first image within {difference:.4f} of float32)").format(
                difference=self.difference
            )
            if chosen
            else _("MUSIQ: float32 (bfloat16 differed by {difference:.3f})").format(
                difference=self.difference
            )
        )
        rest = self._run(patches[1:], bf16=chosen) if len(patches) > 1 else None
        self.bf16 = chosen  # set last: a waiting thread reads it once the lock is free
        return exact if rest is None else torch.cat([exact, rest])

    def _run(self, patches: Any, *, bf16: bool) -> Any:
        import torch

        # The patches are already MUSIQ's own preprocessing; its forward skips that
        # step only when ``self.training`` is set, so it runs on a view of the net
        # that says so (children stay in eval mode; thread-safe, the net is untouched).
        with torch.autocast(patches.device.type, dtype=torch.bfloat16, enabled=bf16):
            return type(self.net).forward(Preprocessed(self.net), patches)


def musiq_patches(image: Any, opts: dict) -> Any:
    """MUSIQ's own preprocessing (scale to [-1, 1], multi-scale patches) for one image."""
    from pyiqa.data.multiscale_trans_util import get_multiscale_patches

    return get_multiscale_patches((image.unsqueeze(0) - 0.5) * 2, **opts)[0]


# ------------------------------------------------------------------ PIQE, same numbers, faster


class FastPiqe:
    """pyiqa's PIQE score (``pyiqa.archs.piqe_arch.piqe``), the same numbers bit for bit
    on the CPU, ~2x faster: only the score is computed (not the three full-size masks),
    the no-op symmetric pad is skipped, and the 7x7 Gaussian that normalises the image
    (60% of pyiqa's time: oneDNN's one-channel convolution runs at ~1 GMAC/s) is the same
    row-major chain of fused multiply-adds, run over cache-sized strips of rows.

    PIQE's thresholds make it fragile: a Gaussian that is merely as accurate (separable,
    OpenCV) moves scores by up to 0.7, because ``E[x^2] - E[x]^2`` of 0..255 values
    cancels. So this keeps every operation and its order; tests compare with pyiqa.
    """

    def __init__(self, kernel: Any) -> None:
        self.taps = [
            (i, j, kernel[0, 0, i, j].reshape(1))
            for i in range(kernel.shape[-2])
            for j in range(kernel.shape[-1])
        ]
        self.size = kernel.shape[-1]

    @classmethod
    def create(cls) -> FastPiqe:
        return cls(gaussian_kernel(7, 7.0 / 6))  # pyiqa's normalize_img_with_gauss defaults

    def __call__(self, img: Any) -> Any:
        import torch

        block_size, activity_threshold = 16, 0.1
        if img.shape[1] == 3:
            img = yiq_luma(img)
        img = torch.round(
            255 * (img / torch.max(img.flatten(1), dim=-1)[0].reshape(img.shape[0], 1, 1, 1))
        )
        _, _, height, width = img.shape
        col_pad, row_pad = width % block_size, height % block_size  # sic: as pyiqa pads
        if col_pad or row_pad:
            img = symmetric_pad_end(img, col_pad, row_pad)
        block_var, center_std, surround_std, block_impaired = block_stats(
            self._normalize(img), block_size
        )
        active_blocks = block_var > activity_threshold
        # pyiqa's noise_criterion from here on, the same float operations
        block_sigma = torch.sqrt(block_var)
        cen_sur_dev = torch.nan_to_num(center_std / surround_std)
        block_beta = torch.abs(block_sigma - cen_sur_dev) / torch.max(block_sigma, cen_sur_dev)
        noise_mask = block_sigma > 2 * block_beta
        whsa, wndc, wnc = active_blocks.float(), block_impaired.float(), noise_mask.float()
        dist_block_scores = whsa * wndc * (1 - block_var) + whsa * wnc * block_var
        nhsa = active_blocks.sum(dim=1)
        return ((dist_block_scores.sum(dim=1) + 1) / (1 + nhsa)) * 100

    def _normalize(self, img: Any) -> Any:
        """``normalize_img_with_gauss(img, padding='replicate')``, bit for bit."""
        import torch
        import torch.nn.functional as F

        half = self.size // 2
        padded = F.pad(img, (half, half, half, half), mode="replicate")
        both = self._gauss(torch.cat([padded, padded**2]))
        mu, squares = both[: len(img)], both[len(img) :]
        sigma = torch.sqrt((squares - mu**2).abs() + torch.finfo(img.dtype).eps)
        return (img - mu) / (sigma + 1)

    def _gauss(self, padded: Any, rows: int = 64) -> Any:
        """``F.conv2d(padded, kernel)``: the taps in row-major order, one fused
        multiply-add each (what oneDNN does), a strip of ``rows`` rows at a time."""
        import torch

        n, channels, height, width = padded.shape
        h, w = height - self.size + 1, width - self.size + 1
        out = torch.empty(n, channels, h, w, dtype=padded.dtype)
        for top in range(0, h, rows):
            r = min(rows, h - top)
            acc = out[:, :, top : top + r]
            acc.zero_()
            for i, j, weight in self.taps:
                acc.addcmul_(padded[:, :, top + i : top + i + r, j : j + w], weight)
        return out


# The three helpers pyiqa's PIQE uses, in-house so that the piqe path never imports
# pyiqa. pyiqa (https://github.com/chaofengc/IQA-PyTorch, 0.1.16) is PolyForm
# Noncommercial and this project MIT, so its code is not copied: these are written from
# the public definitions they implement (MATLAB's fspecial('gaussian'), the NTSC YIQ
# luma, symmetric padding), with the float operations in the order that gives pyiqa's
# exact numbers (tests compare each with pyiqa's own function).


def gaussian_kernel(size: int, sigma: float) -> Any:
    """MATLAB's ``fspecial('gaussian', size, sigma)`` as a (1, 1, size, size) float32
    tensor: computed in double (``exp(-(x^2 + y^2) / (2 sigma^2))``, values under
    ``eps * max`` zeroed, divided by the sum), then rounded to float once, as
    ``pyiqa.matlab_utils.fspecial`` gives it."""
    import numpy as np
    import torch

    half = (size - 1.0) / 2.0
    y, x = np.ogrid[-half : half + 1, -half : half + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    total = h.sum()
    if total != 0:
        h /= total
    return torch.from_numpy(h).float().reshape(1, 1, size, size)


def yiq_luma(img: Any) -> Any:
    """The Y of YIQ of an RGB batch (b, 3, H, W) as (b, 1, H, W): the whole 3x3 NTSC
    matrix product, then its first channel (``to_y_channel(img, 1, 'yiq')``): one
    column alone may round differently in the matrix kernel."""
    import torch

    weights = torch.tensor(
        [[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]]
    )
    yiq = torch.matmul(img.permute(0, 2, 3, 1), weights.t().to(img)).permute(0, 3, 1, 2)
    return yiq[:, [0], :, :]


def symmetric_pad_end(img: Any, right: int, bottom: int) -> Any:
    """Pad (b, c, H, W) on the right and at the bottom by mirroring, the edge pixel
    repeated (``symm_pad(img, (0, right, 0, bottom))``, numpy's ``'symmetric'``).
    PIQE pads by ``W % 16`` and ``H % 16``, never more than the side itself."""
    import torch

    height, width = img.shape[-2:]
    if right > width or bottom > height:
        raise ValueError("symmetric_pad_end: a pad longer than the side")
    cols = torch.cat([torch.arange(width), torch.arange(width - 1, width - 1 - right, -1)])
    rows = torch.cat([torch.arange(height), torch.arange(height - 1, height - 1 - bottom, -1)])
    return img[..., rows[:, None], cols[None, :]]


def block_stats(
    norm: Any, block_size: int = 16, window: int = 6, impaired_threshold: float = 0.1
) -> tuple[Any, Any, Any, Any]:
    """pyiqa's block stage of PIQE on the normalised image ``norm`` (b, 1, H, W), per
    block in raster order: the variance, the center and surround deviations of
    ``cal_center_sur_dev`` and ``notice_dist_criterion``'s impaired flag, the same
    floats as pyiqa's ``torch.var``/``torch.std``.

    Those run a scalar Welford loop with a double accumulator over small strided
    reductions (half of the score's time). Here the sums are vector ops in double
    over a view of the image (no copy of the blocks), two-pass, each square root in
    double before the cast to float as torch does; a double two-pass and Welford
    round to the same float (100 bench images x 3,072 blocks: no value differs)."""
    import torch

    b, _, height, width = norm.shape
    n_rows, n_cols = height // block_size, width // block_size
    # as pyiqa's unfold: rows and columns past the last whole block are left out
    view = norm[:, 0, : n_rows * block_size, : n_cols * block_size]
    v = view.reshape(b, n_rows, block_size, n_cols, block_size)  # (b, row, y, col, x)
    f64 = torch.float64
    cols = v.sum(2, dtype=f64)  # (b, row, col, x): each block's column sums
    count = block_size * block_size
    mean = cols.sum(-1)[:, :, None, :, None].div_(count)
    var = torch.sub(v, mean).square_().sum(2).sum(-1).div_(count - 1).float()
    # center: columns 7 and 8; surround: every column but 7 and 9 (pyiqa's two cats
    # drop column 7, then what was column 9)
    c = block_size // 2 - 1
    sur = [k for k in range(block_size) if k not in (c, c + 2)]
    c_mean = (cols[..., c] + cols[..., c + 1])[:, :, None, :, None].div_(2 * block_size)
    center = torch.sub(v[..., c : c + 2], c_mean).square_().sum((2, 4))
    center = center.div_(2 * block_size - 1).sqrt_().float()
    s_mean = cols[..., sur].sum(-1)[:, :, None, :, None].div_(len(sur) * block_size)
    surround = torch.sub(v, s_mean).square_().sum(2)[..., sur].sum(-1)
    surround = surround.div_(len(sur) * block_size - 1).sqrt_().float()
    # the four edges (top, right, bottom, left), each in windows of `window` pixels
    last = block_size - 1
    edges = torch.stack(
        (
            v[:, :, 0],
            v[:, :, :, :, last].transpose(2, 3),
            v[:, :, last],
            v[:, :, :, :, 0].transpose(2, 3),
        ),
        3,
    ).double()  # (b, row, col, 4, block_size)
    n = block_size - window + 1
    s = edges[..., 0:n] + edges[..., 1 : n + 1]
    for k in range(2, window):
        s += edges[..., k : k + n]
    m = s.div_(window)
    acc = torch.sub(edges[..., 0:n], m).square_()
    for k in range(1, window):
        t = torch.sub(edges[..., k : k + n], m)
        acc.addcmul_(t, t)
    seg = acc.div_(window - 1).sqrt_().float()
    impaired = (seg < impaired_threshold).flatten(3).any(3)
    return (
        var.reshape(b, -1),
        center.reshape(b, -1),
        surround.reshape(b, -1),
        impaired.reshape(b, -1),
    )
