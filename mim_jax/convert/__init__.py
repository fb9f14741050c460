"""PyTorch weight import (official MAE, MAWS, DINO, OpenAI/open_clip CLIP, HF CLIP/ViT/ViTMAE) and export (timm)."""
