"""Backbones (fbank, HuBERT), heads (LPMN, AP, MP), k-means codebook initialisation."""

from .backbones import FbankBackbone, HubertBackbone, build_backbone, fbank_features, frame_mask
from .heads import HEADS, HeadOutput, LPMNHead, PoolingHead, ProbeHead, build_head, masked_frames
from .kmeans import kmeans_codebook
from .model import ModelOutput, SERModel

__all__ = [
    "HEADS", "FbankBackbone", "HeadOutput", "HubertBackbone", "LPMNHead", "ModelOutput", "PoolingHead", "ProbeHead",
    "SERModel", "build_backbone", "build_head", "fbank_features", "frame_mask", "kmeans_codebook",
    "masked_frames",
]
