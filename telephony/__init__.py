"""telephony: bridge Twilio phone calls to Realtime speech-to-speech models."""

__version__ = "0.1.0"
