"""Backdoor triggers: a patch (solid or black/white pattern), a whole-image blend, and a masked pattern from a file.

Images are uint8 arrays (N, H, W, C) in 0..255; nets see float tensors (N, C, H, W) in [0, 1]. Every trigger works
in both spaces, so it can be stamped on stored arrays or after augmentation, with the same result up to uint8
rounding. Any class with the `Trigger` protocol's two methods works wherever a trigger is accepted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from mcrobust.errors import ConfigError, DataError

PATTERNS = ("solid", "checkerboard")


MODES = ("replace", "add", "blend")


"""How a MaskedTrigger combines its pattern with the image."""


@runtime_checkable
class Trigger(Protocol):
    """What poisoning and evaluation need from a trigger: the same stamp on uint8 arrays and on [0,1] tensors.

    The type of `data.poison.trigger`: jsonargparse builds any `class_path` whose class has these two methods.
    It compares the methods' parameter names and annotations with the protocol's, so the parameters are
    positional-only and typed `Any` here: a user's class passes with any names and with or without annotations.
    """

    def apply(self, images: Any, /) -> Any:
        """Return triggered copies of uint8 images (N, H, W, C) or (H, W, C), as a uint8 np.ndarray."""
        ...

    def apply_tensor(self, x: Any, /) -> Any:
        """Return triggered copies of float images (N, C, H, W) or (C, H, W) in [0, 1], as a torch.Tensor."""
        ...


def check_uint8(images: np.ndarray) -> np.ndarray:
    """Check for uint8 images (N, H, W, C) or (H, W, C) and return them as an array."""
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise DataError(f"images must be uint8 (N, H, W, C) or (H, W, C), got {array.dtype} of shape {array.shape}")
    return array


def _check_tensor(x: torch.Tensor) -> None:
    """Check for float images (N, C, H, W) or (C, H, W)."""
    if not torch.is_floating_point(x) or x.dim() not in (3, 4):
        raise DataError(f"x must be a float tensor (N, C, H, W) or (C, H, W), got {x.dtype} of shape {tuple(x.shape)}")


class PatchTrigger:
    """A small square stamped onto the image: the BadNets trigger of the paper (3x3 white, bottom right).

    Args:
        size: side of the square in pixels.
        row: top row of the square; None puts it at the bottom with a 1-pixel margin (H - size - 1).
        col: left column of the square; None puts it at the right with a 1-pixel margin (W - size - 1).
        value: pixel value of the square in 0..255, the same in every channel.
        pattern: "solid" (every pixel = value) or "checkerboard" (value and 0 alternating, value top left).
    """

    def __init__(
        self, size: int = 3, row: int | None = None, col: int | None = None, value: int = 255, pattern: str = "solid"
    ) -> None:
        if size < 1:
            raise ConfigError(f"patch size must be at least 1, got {size}")
        if not 0 <= value <= 255:
            raise ConfigError(f"patch value must be in 0..255, got {value}")
        if pattern not in PATTERNS:
            raise ConfigError(f"unknown patch pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
        if (row is not None and row < 0) or (col is not None and col < 0):
            raise ConfigError(f"patch row and col must be >= 0, got row={row}, col={col}")
        self.size, self.row, self.col, self.value, self.pattern = size, row, col, value, pattern

    def __repr__(self) -> str:
        return (
            f"PatchTrigger(size={self.size}, row={self.row}, col={self.col}, value={self.value}, "
            f"pattern={self.pattern!r})"
        )

    def position(self, height: int, width: int) -> tuple[int, int]:
        """Return the (row, col) of the square's top-left pixel in an image of this size; ConfigError if outside."""
        row = height - self.size - 1 if self.row is None else self.row
        col = width - self.size - 1 if self.col is None else self.col
        if row < 0 or col < 0 or row + self.size > height or col + self.size > width:
            raise ConfigError(
                f"a {self.size}x{self.size} patch at row {row}, col {col} does not fit a {height}x{width} image; "
                "choose a smaller size or another position"
            )
        return row, col

    def mask(self) -> np.ndarray:
        """Return the square's pixel values, uint8 (size, size)."""
        if self.pattern == "solid":
            return np.full((self.size, self.size), self.value, dtype=np.uint8)
        grid = np.add.outer(np.arange(self.size), np.arange(self.size)) % 2 == 0
        return np.where(grid, self.value, 0).astype(np.uint8)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Return a copy of uint8 images (N, H, W, C) or (H, W, C) with the square in every channel."""
        out = check_uint8(images).copy()
        row, col = self.position(out.shape[-3], out.shape[-2])
        out[..., row : row + self.size, col : col + self.size, :] = self.mask()[:, :, None]
        return out

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Return a copy of float images (N, C, H, W) or (C, H, W) in [0, 1] with the square in every channel."""
        _check_tensor(x)
        row, col = self.position(x.shape[-2], x.shape[-1])
        out = x.clone()
        patch = torch.as_tensor(self.mask(), dtype=x.dtype, device=x.device) / 255.0
        out[..., row : row + self.size, col : col + self.size] = patch
        return out


class BlendTrigger:
    """A whole-image blend x' = (1 - alpha) x + alpha * pattern (Chen et al. 2017), an alternative to the patch.

    Args:
        alpha: blend weight of the pattern, in [0, 1].
        pattern_path: image file of the pattern (resized to the data's H x W); None draws seeded uniform noise.
        seed: seed of the noise pattern (unused with a file).
    """

    def __init__(self, alpha: float = 0.1, pattern_path: str | None = None, seed: int = 0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"blend alpha must be in [0, 1], got {alpha}")
        self.alpha, self.pattern_path, self.seed = float(alpha), pattern_path, seed
        self._source: np.ndarray | None = None
        if pattern_path is not None:
            if not Path(pattern_path).is_file():
                raise DataError(f"blend pattern file {pattern_path} does not exist")
            try:
                with Image.open(pattern_path) as image:
                    self._source = np.asarray(image.convert("RGB"), dtype=np.uint8)
            except OSError as error:
                raise DataError(f"blend pattern file {pattern_path} is not a readable image ({error})") from None
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        return f"BlendTrigger(alpha={self.alpha}, pattern_path={self.pattern_path!r}, seed={self.seed})"

    def pattern(self, height: int, width: int, channels: int) -> np.ndarray:
        """Return the pattern as uint8 (H, W, C) for images of this shape (the same array for the same shape)."""
        key = (height, width, channels)
        if key not in self._cache:
            self._cache[key] = self._make_pattern(height, width, channels)
        return self._cache[key]

    def _make_pattern(self, height: int, width: int, channels: int) -> np.ndarray:
        """Resize the file's pattern to the shape, or draw seeded noise of it."""
        if self._source is None:
            return np.random.default_rng(self.seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        if channels not in (1, 3):
            raise ConfigError(f"a pattern file blends into 1- or 3-channel images, got {channels} channels")
        image = Image.fromarray(self._source).resize((width, height), Image.Resampling.BILINEAR)
        if channels == 1:
            image = image.convert("L")
        return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Return blended copies of uint8 images (N, H, W, C) or (H, W, C), rounded to the nearest integer."""
        array = check_uint8(images)
        pattern = self.pattern(*array.shape[-3:]).astype(np.float64)
        blended = (1.0 - self.alpha) * array + self.alpha * pattern
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Return blended copies of float images (N, C, H, W) or (C, H, W) in [0, 1]."""
        _check_tensor(x)
        channels, height, width = x.shape[-3:]
        pattern = torch.as_tensor(self.pattern(height, width, channels), device=x.device).permute(2, 0, 1)
        return (1.0 - self.alpha) * x + self.alpha * (pattern.to(x.dtype) / 255.0)


class MaskedTrigger:
    """A trigger given as a pattern and a mask, the form published backdoors come in (files or inline lists).

    In 0..255 pixel units, with m the mask and p the pattern at each pixel they cover:
    "replace" x' = m p + (1 - m) x; "add" x' = clip(x + alpha m p, 0, 255), p a signed perturbation;
    "blend" x' = (1 - alpha m) x + alpha m p. The same formulas run on [0,1] tensors with p / 255, so
    `apply` and `apply_tensor` agree up to uint8 rounding (exactly for "replace" with a 0/1 mask).

    Args:
        pattern: a .npy file, an image file (.png, ...) or a nested list, shape (h, w) for every channel or
            (h, w, C); values in 0..255, or in -255..255 for mode "add" (a .npy or a list: an image holds no signs).
        mask: where and how strongly the pattern applies, in [0, 1], shape (h, w): a .npy file, an image file
            (its gray levels / 255) or a nested list; None takes the pattern image's alpha channel if it has
            one, else covers the whole pattern.
        mode: "replace", "add" or "blend".
        alpha: strength in [0, 1]: the pattern's weight in "blend", the perturbation's scale in "add";
            "replace" is "blend" at 1 and takes no other value.
        row: top row of the pattern; None puts it at the bottom with a 1-pixel margin (H - h - 1), or at row
            0 when it is as tall as the image (a full-size pattern covers the image).
        col: left column of the pattern; None puts it at the right with a 1-pixel margin (W - w - 1), or 0.
    """

    def __init__(
        self,
        pattern: str | list[list[float]] | list[list[list[float]]],
        mask: str | list[list[float]] | None = None,
        mode: str = "replace",
        alpha: float = 1.0,
        row: int | None = None,
        col: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"trigger mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= alpha <= 1.0 or (mode == "replace" and alpha != 1.0):
            raise ConfigError(f"trigger alpha must be in [0, 1] (1 for mode 'replace', else use 'blend'), got {alpha}")
        if (row is not None and row < 0) or (col is not None and col < 0):
            raise ConfigError(f"trigger row and col must be >= 0, got row={row}, col={col}")
        self.mode, self.alpha, self.row, self.col = mode, float(alpha), row, col
        self.pattern, alpha_channel = _read_pattern(pattern, signed=mode == "add")
        if mask is not None:
            self.mask = _read_mask(mask, self.pattern.shape[:2])
        else:
            self.mask = alpha_channel if alpha_channel is not None else np.ones(self.pattern.shape[:2])
        self.pattern_source, self.mask_source = _describe(pattern, self.pattern), _describe(mask, self.mask)

    def __repr__(self) -> str:
        return (
            f"MaskedTrigger(pattern={self.pattern_source}, mask={self.mask_source}, mode={self.mode!r}, "
            f"alpha={self.alpha}, row={self.row}, col={self.col})"
        )

    def position(self, height: int, width: int) -> tuple[int, int]:
        """Return the (row, col) of the pattern's top-left pixel in an image of this size; ConfigError if outside."""
        size_h, size_w = self.mask.shape
        row = max(height - size_h - 1, 0) if self.row is None else self.row
        col = max(width - size_w - 1, 0) if self.col is None else self.col
        if row + size_h > height or col + size_w > width:
            raise ConfigError(
                f"a {size_h}x{size_w} trigger pattern at row {row}, col {col} does not fit a {height}x{width} image; "
                "use a smaller pattern or another position"
            )
        return row, col

    def _channels(self, channels: int) -> np.ndarray:
        """The pattern as (h, w, C') for images of `channels` channels (C' = 1 broadcasts)."""
        if self.pattern.shape[2] not in (1, channels):
            raise ConfigError(
                f"the trigger pattern has {self.pattern.shape[2]} channels, the images {channels}; "
                "give a pattern of shape (h, w) or with one value per image channel"
            )
        return self.pattern

    def _mix(self, x: Any, pattern: Any, mask: Any) -> Any:
        """The mode's formula on the covered pixels; numpy arrays or tensors alike."""
        weight = self.alpha * mask
        if self.mode == "add":
            return x + weight * pattern
        return (1.0 - weight) * x + weight * pattern

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Return triggered copies of uint8 images (N, H, W, C) or (H, W, C), rounded to the nearest integer."""
        out = check_uint8(images).copy()
        pattern = self._channels(out.shape[-1])
        row, col = self.position(out.shape[-3], out.shape[-2])
        window = (..., slice(row, row + self.mask.shape[0]), slice(col, col + self.mask.shape[1]), slice(None))
        mixed = self._mix(out[window].astype(np.float64), pattern, self.mask[:, :, None])
        out[window] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        return out

    def apply_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Return triggered copies of float images (N, C, H, W) or (C, H, W) in [0, 1]."""
        _check_tensor(x)
        pattern = self._channels(x.shape[-3])
        row, col = self.position(x.shape[-2], x.shape[-1])
        window = (..., slice(row, row + self.mask.shape[0]), slice(col, col + self.mask.shape[1]))
        scaled = torch.as_tensor(pattern / 255.0, dtype=x.dtype, device=x.device).permute(2, 0, 1)
        mask = torch.as_tensor(self.mask, dtype=x.dtype, device=x.device)
        out = x.clone()
        out[window] = self._mix(out[window], scaled, mask).clamp(0.0, 1.0)
        return out


def _describe(source: object, array: np.ndarray) -> str:
    """How repr shows a pattern or mask: the file's name, or the shape of an inline array."""
    if source is None or isinstance(source, (str, os.PathLike)):
        return repr(None if source is None else str(source))
    return f"<inline {'x'.join(map(str, array.shape))}>"


def _read_pattern(source: object, signed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The pattern as float64 (h, w, C) and, for an image with transparency, its alpha channel in [0, 1]."""
    array = _read_array(source, "pattern", image_mode=None)
    alpha = None
    if array.ndim == 3 and isinstance(source, (str, os.PathLike)) and _is_image(source) and array.shape[2] in (2, 4):
        array, alpha = array[:, :, :-1], array[:, :, -1] / 255.0  # LA or RGBA
    if array.ndim == 2:
        array = array[:, :, None]
    low = -255.0 if signed else 0.0
    if array.ndim != 3 or 0 in array.shape:
        raise ConfigError(f"the trigger pattern must have shape (h, w) or (h, w, C), got {array.shape}")
    if not np.isfinite(array).all() or array.min() < low or array.max() > 255:
        raise ConfigError(
            f"the trigger pattern's values must be in {low:g}..255 (pixel units, not [0, 1]), "
            f"got {array.min():g}..{array.max():g}"
        )
    return array, alpha


def _read_mask(source: object, shape: tuple[int, ...]) -> np.ndarray:
    """The mask as float64 (h, w) in [0, 1], the pattern's height and width."""
    mask = _read_array(source, "mask", image_mode="L")
    if isinstance(source, (str, os.PathLike)) and _is_image(source):
        mask = mask / 255.0
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.shape != tuple(shape):
        raise ConfigError(f"the trigger mask has shape {mask.shape}, the pattern {tuple(shape)}; give an (h, w) mask")
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ConfigError(f"the trigger mask's values must be in [0, 1], got {mask.min():g}..{mask.max():g}")
    return mask


def _is_image(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() != ".npy"


def _read_array(source: object, setting: str, image_mode: str | None) -> np.ndarray:
    """A float64 array from a .npy file, an image file or a nested list; ConfigError naming the setting."""
    if not isinstance(source, (str, os.PathLike)):
        try:
            return np.asarray(source, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"the trigger {setting} must be a file or a rectangular nested list of numbers") from None
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"trigger {setting} file {path} does not exist; check the trigger's {setting} setting")
    try:
        if not _is_image(path):
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        with Image.open(path) as image:
            return np.asarray(image.convert(image_mode or _pattern_mode(image)), dtype=np.float64)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot read trigger {setting} file {path} ({str(error).splitlines()[0][:120]}); "
            "give a .npy array or an image such as .png"
        ) from None


def _pattern_mode(image: Image.Image) -> str:
    """Gray or RGB, with the alpha channel where the image has transparency."""
    color = image.mode not in ("1", "L", "LA", "I", "I;16", "F")
    alpha = "A" in image.getbands() or "transparency" in image.info
    return ("RGB" if color else "L") + ("A" if alpha else "")
