"""Tests of the control-plane REST API over real HTTP."""
