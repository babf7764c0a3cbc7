"""ferlive training: FER2013 data, augmentation, models, training, evaluation and export."""
import os

# TensorFlow's oneDNN kernels for AVX-512 (tensorflow-cpu 2.20 and 2.21) corrupt the heap in the backward
# pass of a 1x1 stride-2 convolution, which mini_xception and xception_wide use on their residual paths:
# training dies with "Segmentation fault" or "malloc(): corrupted top size" on CPUs with AVX-512 and works
# on AVX2. Keeping oneDNN to its AVX2 kernels avoids it and costs no training speed we could measure (README,
# "train_throughput").
# Set ONEDNN_MAX_CPU_ISA (or the older DNNL_MAX_CPU_ISA) yourself to choose otherwise.
if "ONEDNN_MAX_CPU_ISA" not in os.environ and "DNNL_MAX_CPU_ISA" not in os.environ:
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
