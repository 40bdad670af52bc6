"""Where the repository's folders are: one place, so no module guesses its way up the tree.

These paths exist in a clone or an editable install (`pip install -e .`), where the
package sits next to `data/`, `notebooks/` and `benchmarks/`.
"""

from __future__ import annotations

from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_DIR / "data"  # paintings/, pretrained/, README.md with every source and licence
PAINTINGS_DIR = DATA_DIR / "paintings"  # the Met thumbnails and metadata.csv
PRETRAINED_DIR = DATA_DIR / "pretrained"
SHIPPED_MODEL_DIR = PRETRAINED_DIR / "styles32"  # default of sample/evaluate, notebook 04, README
AUTOENCODER_DIR = PRETRAINED_DIR / "autoencoder64"  # the shipped 64 px KL autoencoder (notebook 05)
LATENT_MODEL_DIR = PRETRAINED_DIR / "latent64"  # the shipped latent diffusion model (notebook 05)
STYLE_CLASSIFIER_DIR = PRETRAINED_DIR / "style_classifier"  # cache of the evaluation classifier
STRUCTURE_CLASSIFIER_DIR = PRETRAINED_DIR / "structure_classifier"  # the palette-blind judge's cache
NOTEBOOK_DIR = REPO_DIR / "notebooks"
OUTPUTS_DIR = REPO_DIR / "outputs"  # default home of what the notebooks make
BENCHMARKS_DIR = REPO_DIR / "benchmarks"
