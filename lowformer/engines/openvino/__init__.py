"""OpenVINO (CPU plugin): IR artifacts (`.xml` + `.bin`), and ONNX artifacts when asked (`--runtime openvino`)."""
