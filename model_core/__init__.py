"""model_core: DreamZero's causal video-action diffusion transformer (pure PyTorch, never imports ROS)."""
