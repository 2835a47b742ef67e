"""Backbones (fbank; HuBERT, wav2vec 2.0, WavLM, data2vec-audio), heads (LPMN, AP, MP), k-means codebook
initialisation."""

from .backbones import FbankBackbone, HubertBackbone, build_backbone, fbank_features, frame_mask
from .encoders import FAMILIES, SpeechEncoderBackbone
from .heads import (
    FEATURE_NORMS, HEADS, READINGS, RESTARTS, HeadOutput, LPMNHead, PoolingHead, ProbeHead, build_head, masked_frames,
)
from .kmeans import kmeans_codebook
from .model import ModelOutput, SERModel

__all__ = [
    "FAMILIES", "FEATURE_NORMS", "HEADS", "READINGS", "RESTARTS", "FbankBackbone", "HeadOutput", "HubertBackbone", "LPMNHead", "ModelOutput", "PoolingHead",
    "ProbeHead", "SERModel", "SpeechEncoderBackbone", "build_backbone", "build_head", "fbank_features", "frame_mask",
    "kmeans_codebook", "masked_frames",
]
