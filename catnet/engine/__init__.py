"""The inference engine: the frozen network's forward passes that need no gradient (predict,
evaluate, the labelling page's ranking, training's frozen-feature pass) run on OpenVINO, built
from the PyTorch network on first use and cached; PyTorch stays the source of truth (checkpoints,
training, explain's gradients) and the fallback.

    runtime.py  torch-free: is OpenVINO usable here, compile a cached graph, run it
    store.py    torch-free: the cache folder of one checkpoint (graphs + what predict needs)
    build.py    needs torch: the graphs, traced from the PyTorch network
"""
