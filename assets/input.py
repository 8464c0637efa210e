"""Input step: find and read the ground-truth CSV (or list the images when inference has none)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from alo import Asset, Config, Data, DataError, StepArgs, StepContext
from vad.images import IMAGE_EXTENSIONS
from vad.samples import GENERATED_PATH_COLUMN


class InputArgs(StepArgs):
    """Arguments of the input step."""

    file_type: Literal["csv"] = "csv"
    encoding: str = "utf-8"


def list_images(folder: Path) -> list[str]:
    """List image files under a folder (recursively, hidden folders skipped), as relative POSIX paths.

    Args:
        folder: The data folder.

    Returns:
        Sorted relative paths.
    """
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(relative.as_posix())
    return sorted(found)


def read_csv(path: Path, encoding: str) -> pd.DataFrame:
    """Read a ground-truth CSV with every cell as text (empty cells become missing).

    Args:
        path: The CSV file.
        encoding: Its text encoding.

    Returns:
        The table.

    Raises:
        DataError: Undecodable, empty or malformed file.
    """
    try:
        return pd.read_csv(path, encoding=encoding, dtype=str, skipinitialspace=True)
    except LookupError:
        msg = f"plan error: input encoding '{encoding}' is not a known text encoding; use e.g. utf-8, cp949, latin-1"
        raise DataError(msg) from None
    except UnicodeDecodeError:
        msg = f"data error: {path} is not valid {encoding} text; save it as UTF-8 or set the input arg 'encoding'"
        raise DataError(msg) from None
    except pd.errors.EmptyDataError:
        msg = f"data error: {path} is empty; add a header 'label,image_path' and one row per image"
        raise DataError(msg) from None
    except (pd.errors.ParserError, OSError) as exc:
        msg = f"data error: cannot parse {path} as CSV ({str(exc).splitlines()[0][:100]}); fix the file"
        raise DataError(msg) from None


class InputStep(Asset):
    """Reads the ground truth of the pipeline's data folder into ``data['dataframe']``."""

    Args = InputArgs

    def run(self, ctx: StepContext, data: Data, config: Config) -> tuple[Data, Config]:
        """Find the CSV, read it, and pass it on.

        Args:
            ctx: Run context (``ctx.data_path`` is the data folder, or for inference one image file).
            data: Flowing data.
            config: Flowing settings.

        Returns:
            ``data`` with ``dataframe`` and ``data_dir``; ``config`` with ``has_csv``.
        """
        args = ctx.args_as(InputArgs)
        folder = ctx.data_path
        assert folder is not None
        if folder.is_file():  # one image to score (an edge request's dataset_uri)
            if folder.suffix.lower() not in IMAGE_EXTENSIONS:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                msg = f"data error: {folder} is not an image file ({exts}); point the data path at an image or a folder"
                raise DataError(msg)
            data["dataframe"] = pd.DataFrame({GENERATED_PATH_COLUMN: [folder.name]})
            data["data_dir"] = folder.parent
            config["has_csv"] = False
            ctx.logger.info(f"scoring the single image {folder}")
            return data, config
        csvs = sorted(p for p in folder.glob(f"*.{args.file_type}") if p.is_file())
        if len(csvs) > 1:
            names = ", ".join(p.name for p in csvs)
            msg = f"data error: {folder} holds {len(csvs)} CSV files ({names}); keep exactly one ground-truth CSV"
            raise DataError(msg)
        if csvs:
            table = read_csv(csvs[0], args.encoding)
            ctx.logger.info(f"read {len(table)} rows x {len(table.columns)} columns from {csvs[0]}")
        elif ctx.pipeline == "train":
            msg = f"data error: no ground-truth CSV in {folder}; add one with columns 'label,image_path'"
            raise DataError(msg)
        else:
            images = list_images(folder)
            if not images:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                msg = f"data error: no images ({exts}) and no CSV in {folder}; put the images to score there"
                raise DataError(msg)
            table = pd.DataFrame({GENERATED_PATH_COLUMN: images})
            ctx.logger.info(f"no CSV in {folder}: scoring all {len(images)} images found there")
        data["dataframe"] = table
        data["data_dir"] = folder
        config["has_csv"] = bool(csvs)
        return data, config


ASSET = InputStep
