"""Class activation maps from CLIP: Softmax-GradCAM (`gradcam`) and attention-based refinement (`caa`)."""
