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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import console
from ..console import StepFailed, UsageError, log, one_line

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
    names: Sequence[str], device: Any, weights_dir: Path | None, *, pretrained: bool = True
) -> list[Metric]:
    """pyiqa metrics, created once. Unknown names and missing weights end the step.
    ``pretrained=False`` builds them with random weights (see :data:`PRETRAINED_ENV`)."""
    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    _guard_downloads(weights_dir)
    metrics = []
    for name in names:
        config = DEFAULT_CONFIGS.get(name)
        if config is None:
            raise UsageError(
                f"unknown pyiqa metric {name!r} (--model); see pyiqa.list_models('NR')"
            )
        if config.get("metric_mode") != "NR":
            raise UsageError(f"{name} needs a reference image; --model takes no-reference metrics")
        kwargs = {} if pretrained or not _takes_pretrained(config) else {"pretrained": False}
        console.console.print(f"Loading {name} on {device} ...")
        try:
            model = pyiqa.create_metric(name, device=device, as_loss=False, **kwargs)
        except WeightsMissing as exc:
            file_name = os.path.basename(exc.url.split("?")[0])
            sub = Path(exc.target).parent.name
            raise StepFailed(
                f"weights for {name} are missing and cannot be downloaded: {file_name}. "
                f"Put it at {exc.target} (or at DIR/{sub}/{file_name} with --weights-dir DIR); "
                f"download it on a machine with internet from {exc.url}"
            ) from exc
        except Exception as exc:
            log.exception("cannot create %s", name)
            raise StepFailed(f"cannot create metric {name}: {one_line(exc)}") from exc
        scale = parse_score_range(model.score_range, bool(model.lower_better))
        if scale is None:
            console.console.print(
                f"[yellow]{name} has no documented score range; raw scores are used "
                f"(prefer --percentiles)[/yellow]"
            )
        is_musiq = type(model.net).__name__ == "MUSIQ"
        if is_musiq:
            fast_attention(model.net)
        metrics.append(Metric(name, model, scale, is_musiq=is_musiq))
    return metrics


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


def musiq_patches(image: Any, opts: dict) -> Any:
    """MUSIQ's own preprocessing (scale to [-1, 1], multi-scale patches) for one image."""
    from pyiqa.data.multiscale_trans_util import get_multiscale_patches

    return get_multiscale_patches((image.unsqueeze(0) - 0.5) * 2, **opts)[0]
