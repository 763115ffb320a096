"""Images read from a folder of files, optionally cropped: the image loader of the file-based
benchmarks (SugarCrepe, ARO).

An image reference is ``(relative_path, box)`` with ``box`` either ``None`` (the whole image) or
``(left, top, right, bottom)`` in pixels, the box :meth:`PIL.Image.Image.crop` takes. Every error
names the file and, when the caller said so, the annotation row that refers to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from numbers import Real

from PIL import Image

from ..collator import to_rgb
from .core import MatchingBenchmark

Box = tuple[float, float, float, float]
FileRef = tuple[str, "Box | None"]


def annotation_files(annotations, extension: str, what: str, recursive: bool = False) -> list[str]:
    """The annotation files named by ``annotations``: one file, a list of files, or a folder whose
    ``*<extension>`` files are taken (sorted; with ``recursive``, also in sub-folders). ``what``
    names the files in errors (e.g. "VALSE annotation files")."""
    if isinstance(annotations, (str, os.PathLike)):
        path = os.fspath(annotations)
        if not os.path.isdir(path):
            return [path]
        if recursive:
            found = [os.path.join(folder, f) for folder, _, names in os.walk(path) for f in names]
        else:
            found = [os.path.join(path, f) for f in os.listdir(path)]
        files = sorted(f for f in found if f.endswith(extension))
        if not files:
            raise FileNotFoundError(f"no {what} (*{extension}) {'under' if recursive else 'in'} {path}")
        return files
    files = [os.fspath(f) for f in annotations]
    if not files:
        raise ValueError(f"no {what} given")
    return files


def read_json(path: str | os.PathLike, what: str, expected: type | tuple[type, ...] = (list, dict)):
    """The JSON document at ``path``; errors name ``what`` it is (e.g. "ARO annotation file") and
    the file: missing (FileNotFoundError), not JSON or not of the ``expected`` type (ValueError)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: {what} is not UTF-8 text ({err})") from err
    if not isinstance(data, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ValueError(f"{path}: expected a JSON {names}, got {type(data).__name__}")
    return data


def require_strings(row, keys: Iterable[str], where: str) -> None:
    """Checks that the annotation ``row`` is an object whose ``keys`` hold non-empty strings;
    ``where`` names the file and row in the ValueError."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    for key in keys:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"{where}: {key!r} must be a non-empty string, got {row.get(key)!r}")


def xywh_box(x, y, w, h, where: str) -> Box:
    """``(left, top, right, bottom)`` of the box ``x, y, w, h`` (ARO's ``bbox_*`` fields), checked
    to be numbers with ``x, y >= 0`` and ``w, h > 0``; ``where`` names the row in errors."""
    for name, value in (("bbox_x", x), ("bbox_y", y), ("bbox_w", w), ("bbox_h", h)):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"{where}: {name} must be a number, got {value!r}")
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"{where}: invalid box x={x}, y={y}, w={w}, h={h} (need x, y >= 0 and w, h > 0)")
    return (x, y, x + w, y + h)


def check_relative(name: str, where: str | None = None, what: str = "image file name", folder: str | os.PathLike | None = None) -> None:
    """Raises a ValueError when ``name``, read from an annotation file, would leave the folder it is
    relative to: an absolute name, or one with more ``..`` than folders (``../x.jpg``,
    ``a/../../x.jpg``). ``where`` names the annotation (file and entry) that gave the name, ``what``
    what the name is ("image file name", "dataset folder name"), ``folder`` the folder when known.

    The check is on the name, not on where symbolic links lead: a folder whose files are links to
    elsewhere (the Hugging Face Hub cache links its snapshots' files to blobs) is still that folder.
    """
    normalized = os.path.normpath(name)
    if os.path.isabs(name) or normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
        into = f" {os.fspath(folder)}" if folder is not None else " (absolute, or through '..')"
        used_by = f" (used by {where})" if where else ""
        raise ValueError(f"{what} {name!r} leaves the images folder{into}{used_by}")


def join_inside(folder: str | os.PathLike, name: str, where: str | None = None, what: str = "image file name") -> str:
    """``folder/name`` for a ``name`` read from an annotation file, or the ValueError of
    :func:`check_relative` (naming ``where``, the annotation) when the name leaves ``folder``."""
    check_relative(name, where, what, folder)
    return os.path.join(os.fspath(folder), name)


class ImageFolder:
    """Loads ``(relative_path, box)`` references from files under ``root`` as RGB images.

    Args:
        root: the folder the relative paths start from.
        where: optional ``{ref: "annotations.json, id 42"}`` naming, for each reference, the
            annotation that uses it, so that an error says which row to fix.
    """

    def __init__(self, root: str | os.PathLike, where: Mapping[FileRef, str] | None = None):
        self.root = os.fspath(root)
        self.where = dict(where or {})

    def path(self, ref: FileRef) -> str:
        """The file of ``ref``. Under a ``root``, a name that leaves it (absolute, or through ``..``) is a
        ValueError (:func:`join_inside`): an annotation must not make the loader read files outside the
        images folder. (Loaders that join several source folders themselves, with :func:`join_inside`,
        pass ``root=""`` and the joined paths.)"""
        if not self.root:
            return ref[0]
        return join_inside(self.root, ref[0], self.where.get(ref))

    def _context(self, ref: FileRef) -> str:
        where = self.where.get(ref)
        return f" (used by {where})" if where else ""

    def check_files(self, refs: Iterable[FileRef]) -> None:
        """Raises :class:`FileNotFoundError` naming the first referenced file that does not exist."""
        seen: set[str] = set()
        for ref in refs:
            if ref[0] in seen:
                continue
            seen.add(ref[0])
            if not os.path.isfile(self.path(ref)):
                raise FileNotFoundError(f"image file not found: {self.path(ref)}{self._context(ref)}")

    def __call__(self, ref: FileRef) -> Image.Image:
        box = ref[1]
        path = self.path(ref)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}{self._context(ref)}")
        try:
            with Image.open(path) as opened:
                opened.load()  # to_rgb may return the opened image itself, which must outlive the file
                image = to_rgb(opened)
        except Exception as err:  # PIL raises several unrelated types for corrupt files
            raise ValueError(f"unreadable image file {path}{self._context(ref)}: {type(err).__name__}: {err}") from err
        if box is None:
            return image
        left, top, right, bottom = box
        width, height = image.size
        if not (0 <= left < right <= width and 0 <= top < bottom <= height):
            raise ValueError(
                f"crop box (left={left}, top={top}, right={right}, bottom={bottom}) is not inside "
                f"the {width}x{height} image {path}{self._context(ref)}"
            )
        return image.crop(box)


def file_benchmark(name: str, examples: list, images_dir: str | os.PathLike, where: Mapping[FileRef, str], metadata: Mapping) -> MatchingBenchmark:
    """A benchmark whose images are files under ``images_dir``. Every referenced file is checked
    now, so a missing one fails before any model runs; ``where`` names the row using each file."""
    loader = ImageFolder(images_dir, where)
    loader.check_files(where)
    return MatchingBenchmark(name=name, examples=examples, load_image=loader, metadata={"images_dir": os.fspath(images_dir), **metadata})
