"""The configuration grammar and every option."""

from __future__ import annotations

import pytest

from mm7tx.auth import password_matches
from mm7tx.config import (
    EMBEDDED,
    ConfigError,
    load,
    load_file,
    normalise_endpoint,
    with_overrides,
)
from mm7tx.processors import AddressRules
from mm7tx.senders import SMTPSettings
from tests import samples

EXAMPLE_7_1 = samples.EXAMPLE_7_1


def test_seed_example_7_1_is_in_the_seed_and_loads_verbatim():
    seed = (samples.REFERENCE.parent / "seeds" / "momentum-mm7_serv.md").read_text()
    assert EXAMPLE_7_1.strip() in seed
    config = load(EXAMPLE_7_1)
    assert config.rules == AddressRules(
        "test@messagesystems.com",
        "messagesystems.com",
        "test@exampleto.com",
        "exampleto.com",
    )
    assert config.mm7_version == "6.8.0"
    assert config.vasp_paths == ("/ringtones/", "/photo_contest/", "/email_gateway/")


def test_the_shipped_example_file_loads_with_every_option():
    config = load_file(str(samples.HERE.parent / "etc" / "mm7tx.conf"))
    assert config.listen == ("tcp:8080:interface=127.0.0.1", "tcp:8081")
    assert config.smtp.endpoint == "tcp:127.0.0.1:25"
    assert config.smtp.starttls == "opportunistic"
    assert config.smtp.connect_timeout == 10
    assert (
        config.processor_for("/photo_contest/")
        == "mm7tx.examples.shortcode.ShortCodeMailboxes"
    )
    assert config.processor_for("/ringtones/") is None
    assert config.mmsc_paths == ("/mm7/",)
    assert config.delivery_report_attempts == 8
    assert config.max_request_size == 5 * 1024 * 1024
    assert (config.request_timeout, config.idle_timeout) == (30, 60)
    assert (config.max_transactions, config.drain_timeout) == (200, 30)
    assert (config.xml_limits.max_depth, config.xml_limits.max_elements) == (32, 10000)
    assert config.smtp.max_connections == 20
    assert config.smtp.idle_timeout == 30
    vasp1, vasp2, ip, net = config.vasps
    assert vasp1.password == "secret1" and vasp1.max_message_size == 2 * 1024 * 1024
    assert vasp1.max_recipients == 50 and vasp1.rate == 20
    assert vasp1.allows("192.0.2.7") and not vasp1.allows("203.0.113.1")
    assert vasp1.delivery_report_url == "http://127.0.0.1:8080/ringtones/"
    assert password_matches(vasp2.password or "", "secret2")
    assert ip.allows("192.0.2.10") and not ip.allows("192.0.2.11")
    assert net.max_recipients == 1 and net.allows("198.51.100.200")


def test_grammar_case_comments_lists_scopes():
    config = load(
        """
        # a comment
        HTTP_LISTENER { Listen "*:9000" { } Listen ":9001" {} }
        MM7_Serv {
          MM7_VASP_URI_PATHS = ( "/a/", "/b/c/" )   # commas are fine too
          mm7_server_version = 5.3.0
          SMTP_Relay = "maildir:/tmp/x"
          smtp_starttls = required
          smtp_username = "u"
          smtp_password = "p w \\" q"
          smtp_timeout = 30
          mm7_keep_smil = yes
          mm7_processor = "mm7tx.examples.shortcode.ShortCodeMailboxes"
          Path "/b/c/" { processor = "mm7tx.processors.EmailProcessor" }
        }
        """
    )
    assert config.listen == ("tcp:9000", "tcp:9001")
    assert config.vasp_paths == ("/a/", "/b/c/")
    assert config.mm7_version == "5.3.0"
    assert config.smtp == SMTPSettings(
        endpoint="maildir:/tmp/x",
        starttls="required",
        username="u",
        password='p w " q',
        total_timeout=30,
    )
    assert config.keep_smil is True
    assert config.processor_for("/a/") == "mm7tx.examples.shortcode.ShortCodeMailboxes"
    assert config.processor_for("/b/c/") == "mm7tx.processors.EmailProcessor"


@pytest.mark.parametrize(
    "text, line, words",
    [
        (
            'mm7_serv {\n  mm7_vasp_uri_paths = ("/a/")\n  bogus = 1\n}',
            3,
            "unknown mm7_serv option 'bogus'",
        ),
        ('mm7_serv {\n  mm7_vasp_uri_paths = ("/a/")\n', 2, "missing '}'"),
        ('mm7_serv {\n  mm7_vasp_uri_paths = ("a")\n}', 2, "not a path"),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n smtp_timeout = soon\n}',
            3,
            "positive number",
        ),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n smtp_starttls = maybe\n}',
            3,
            "smtp_starttls",
        ),
        ("Other { }", 1, "unknown scope 'Other'"),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }\nVASP "v" { }',
            2,
            "needs a password",
        ),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }\nVASP "v" { password = "p"\n rate = fast }',
            3,
            "rate must be a positive number",
        ),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }\nVASP "v" { password = "p"\n allowed_networks = ("nowhere") }',
            3,
            "'nowhere' is not an IP address or range",
        ),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }\nVASP "v" { password = "p"\n colour = "red" }',
            3,
            "unknown VASP option 'colour'",
        ),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/mm7/") }',
            1,
            "both a VASP path and an MMSC path",
        ),
        ("mm7_serv { }", 1, "mm7_vasp_uri_paths is required"),
        ('mm7_serv {\n x = "unterminated\n}', 2, "unexpected character"),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n mm7_processor = "nowhere.Nothing"\n}',
            3,
            "cannot load processor 'nowhere.Nothing'",
        ),
    ],
)
def test_errors_name_file_and_line(text, line, words):
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    assert str(caught.value).startswith(f"my.conf, line {line}: ")
    assert words in str(caught.value)


def test_missing_file():
    with pytest.raises(ConfigError) as caught:
        load_file("/nonexistent/mm7tx.conf")
    assert "/nonexistent/mm7tx.conf" in str(caught.value)


def test_command_line_overrides():
    config = with_overrides(
        load(EXAMPLE_7_1), [":9999", "tcp:1234"], "tcp:relay.example:2525"
    )
    assert config.listen == ("tcp:9999", "tcp:1234")
    assert config.smtp.endpoint == "tcp:relay.example:2525"


def test_embedded_defaults():
    assert EMBEDDED.listen == ("tcp:8080",)
    assert EMBEDDED.vasp_paths == ("/vasp/",)
    assert EMBEDDED.smtp.endpoint == "maildir:Maildir"


def test_momentum_listen_forms():
    assert normalise_endpoint(":8080") == "tcp:8080"
    assert normalise_endpoint("*:8080") == "tcp:8080"
    assert normalise_endpoint("10.1.2.3:80") == "tcp:80:interface=10.1.2.3"
    assert normalise_endpoint("ssl:443:privateKey=k.pem") == "ssl:443:privateKey=k.pem"
