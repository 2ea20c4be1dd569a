"""The one seam that loads models: diffusers pipelines from folders, ONNX upscalers."""
