"""The networks and their weight files: backbones (Caffe ResNet-101, EfficientNet-Lite0, ...),
their input conventions, the authors' released attention weights and the RPN."""
