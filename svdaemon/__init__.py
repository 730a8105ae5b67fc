"""svdaemon: transcribe recordings dropped into watched folders with SenseVoice Small."""

__version__ = "0.1.0"
