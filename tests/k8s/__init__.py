"""Tests of aimass.k8s, the Kubernetes and Ray Jobs executors, and `aimass submit`/`aimass runs`."""
