import json

import pytest

from telephony.serve.realtime_client import auth_headers, realtime_url
from telephony.settings import Settings, SettingsError
from telephony.wire import realtime as rt
from telephony.wire import realtime_beta
from telephony.wire import twilio as tw


def test_parse_twilio_messages_as_twilio_sends_them():
    start = tw.parse(json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
        "start": {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
                  "customParameters": {"from": "+1555"},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
    assert start == tw.Start("MZ1", "CA1", "AC1", ("inbound",), {"from": "+1555"})
    media = tw.parse('{"event":"media","streamSid":"MZ1","media":{"track":"inbound","chunk":"2",'
                     '"timestamp":"40","payload":"//8="}}')
    assert media == tw.Media("//8=", 40, "inbound", "MZ1")
    assert tw.parse('{"event":"mark","streamSid":"MZ1","mark":{"name":"7"}}') == tw.Mark("7")
    assert tw.parse('{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"5"}}') == tw.Dtmf("5")
    assert tw.parse('{"event":"stop","stop":{"callSid":"CA1"}}') == tw.Stop("CA1")
    assert tw.parse('{"event":"something_new"}') is None


@pytest.mark.parametrize("text", ["not json", "[1]", '{"event":"media"}', '{"event":"media","media":{}}',
                                  '{"event":"mark","mark":{}}', '{"no":"event"}', b"\x00\x01"])
def test_bad_twilio_messages_raise_a_clear_error(text):
    with pytest.raises(tw.TwilioProtocolError):
        tw.parse(text)


def test_serialize_outbound_messages():
    assert json.loads(tw.serialize(tw.SendMedia("AAA="), "MZ1")) == {
        "event": "media", "streamSid": "MZ1", "media": {"payload": "AAA="}}
    assert json.loads(tw.serialize(tw.SendMark("3"), "MZ1")) == {
        "event": "mark", "streamSid": "MZ1", "mark": {"name": "3"}}
    assert json.loads(tw.serialize(tw.SendClear(), "MZ1")) == {"event": "clear", "streamSid": "MZ1"}


def test_beta_decode_maps_wire_names_to_core_events():
    d = realtime_beta.decode
    assert d('{"type":"response.audio.delta","response_id":"r","item_id":"i","delta":"AA=="}') == \
        rt.AudioDelta("r", "i", "AA==")
    assert d('{"type":"input_audio_buffer.speech_started","item_id":"u","audio_start_ms":120}') == \
        rt.SpeechStarted("u", 120)
    assert d('{"type":"error","error":{"type":"invalid_request_error","code":"x","message":"m",'
             '"event_id":"e1"}}') == rt.RealtimeError("invalid_request_error", "x", "m", "e1")
    assert d('{"type":"rate_limits.updated","rate_limits":[]}') == rt.Ignored("rate_limits.updated")
    assert d('{"type":"response.output_audio.delta"}') == rt.Unknown("response.output_audio.delta")
    with pytest.raises(rt.RealtimeProtocolError):
        d("{nope")


def test_settings_defaults_and_errors():
    s = Settings.from_env({})
    assert s.realtime_url == "wss://api-platform.ope.ai/v1/realtime"
    assert s.realtime_model == "opeai/AudioLLM/Voice2" and s.port == 8000
    assert Settings.from_env({"API_KEY": "k1"}).realtime_api_key == "k1"
    assert Settings.from_env({"API_KEY": "k1", "REALTIME_API_KEY": "k2"}).realtime_api_key == "k2"
    assert "k2" not in repr(Settings.from_env({"REALTIME_API_KEY": "k2"}))
    with pytest.raises(SettingsError, match="PORT"):
        Settings.from_env({"PORT": "eighty"})
    with pytest.raises(SettingsError, match="REALTIME_DIALECT"):
        Settings.from_env({"REALTIME_DIALECT": "v2"})
    with pytest.raises(SettingsError, match="REALTIME_URL"):
        Settings.from_env({"REALTIME_URL": "http://x"})


def test_settings_read_the_environment_only_through_from_env(monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("log_format", "json")  # not LOG_FORMAT: names are in capitals
    assert Settings(twilio_validate_signatures=False).port == 8000 and Settings.from_env().port == 9123
    assert Settings.from_env().log_format == "text"
    blank = Settings.from_env({"PORT": "  ", "PUBLIC_URL": "", "LOG_FORMAT": " JSON ", "PUBLIC_URL ": "x"})
    assert (blank.port, blank.public_url, blank.log_format) == (8000, None, "json")
    assert Settings.from_env({"PUBLIC_URL": " https://bridge.example.com/ "}).public_url == "https://bridge.example.com"


def test_settings_errors_name_every_bad_variable_and_no_secret():
    env = {"REALTIME_API_KEY": "sk-live-123", "TWILIO_AUTH_TOKEN": "tok-456", "STREAM_SECRET": "str-789",
           "PORT": "eighty", "AUDIO_CODEC": "opus", "TRANSCRIPT_WEBHOOK_URL": "ftp://hooks"}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "PORT" in message and "AUDIO_CODEC" in message and "TRANSCRIPT_WEBHOOK_URL" in message
    assert "'eighty'" in message and "'opus'" in message  # a plain value is shown, to be fixed
    for secret in ("sk-live-123", "tok-456", "str-789"):
        assert secret not in message and secret not in repr(caught.value.__cause__)


def test_realtime_url_and_headers():
    s = Settings(twilio_validate_signatures=False,
                 realtime_url="wss://h/v1/realtime?x=1", realtime_model="m/o", realtime_api_key="k")
    assert realtime_url(s) == "wss://h/v1/realtime?x=1&model=m/o"
    assert realtime_url(s, intent="transcription") == "wss://h/v1/realtime?x=1&intent=transcription"
    assert auth_headers(s, {"OpenAI-Beta": "realtime=v1"}) == {
        "OpenAI-Beta": "realtime=v1", "Authorization": "Bearer k"}


def test_profile_refuses_unknown_tools_and_non_e164_transfer_numbers(tmp_path):
    from telephony.core.profile import ProfileError, load_profile

    bad_tool = tmp_path / "a.toml"
    bad_tool.write_text('[agent]\ninstructions = "x"\n[tools]\nenabled = ["end_call", "rm_rf"]\n')
    with pytest.raises(ProfileError, match="rm_rf"):
        load_profile(bad_tool)
    bad_number = tmp_path / "b.toml"
    bad_number.write_text('[agent]\ninstructions = "x"\n[transfer]\nsales = "555-1234"\n')
    with pytest.raises(ProfileError, match="E.164"):
        load_profile(bad_number)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "missing.toml")


@pytest.mark.parametrize("url, dialect", [
    ("wss://api.openai.com/v1/realtime", "ga"),  # beta refused there since May 2026
    ("wss://api.openai.com/v1/realtime/", "ga"),
    ("wss://my-res.openai.azure.com/openai/v1/realtime", "ga"),  # Azure's GA path
    ("wss://my-res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview", "beta"),  # Azure's preview
    ("wss://api-platform.ope.ai/v1/realtime", "beta"),  # the default provider
    ("ws://127.0.0.1:9999/v1/realtime", "beta"),
])
def test_an_unset_dialect_follows_an_endpoint_that_speaks_only_ga(url, dialect):
    assert Settings.from_env({"REALTIME_URL": url}).realtime_dialect == dialect


def test_an_explicit_dialect_is_kept_whatever_the_endpoint():
    env = {"REALTIME_URL": "wss://api.openai.com/v1/realtime", "REALTIME_DIALECT": "beta"}
    assert Settings.from_env(env).realtime_dialect == "beta"  # refused there: the call says so (test_upstream_faults)
