"""Pieces every page shares, one concern per module: the app context, sign-in, the frame (navigation and
sidebar), the shared refresh cache, and small widgets."""
