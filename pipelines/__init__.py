"""The SpaceNit Kubeflow pipeline: convert -> stats -> pretrain -> embed -> probe."""
