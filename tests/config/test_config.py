"""The configuration grammar and every option."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import replace

import pytest

from mm7tx.config import (
    EMBEDDED,
    OPTIONS,
    Config,
    ConfigError,
    fill_option_tables,
    load,
    load_file,
    normalise_endpoint,
    options_markdown,
    with_overrides,
)
from mm7tx.http.auth import Account, ListenAccess, password_matches
from mm7tx.http.settings import SubmitSettings
from mm7tx.mail.rules import AddressRules
from mm7tx.mm7.codec.soap import XMLLimits
from mm7tx.smtp.settings import MailInSettings, SMTPSettings
from tests import samples
from tests.certs import make_certificate

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
          mm7_server_default_email_from_domain = f.example
          mm7_server_default_email_to_address = "to@t.example"
          mm7_server_version = 5.3.0
          SMTP_Relay = "maildir:/tmp/x"
          smtp_starttls = required
          smtp_username = "u"
          smtp_password = "p w \\" q"
          smtp_timeout = 30
          mm7_keep_smil = true
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
        ('mm7_serv {\n x = "unterminated\n}', 2, "unterminated string"),
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


def test_a_sqlite_store_in_a_folder_that_does_not_exist_is_refused():
    text = MINIMAL.replace("}", '\n state_store = "sqlite:/nonexistent/dir/x.db"\n}')
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    assert str(caught.value) == (
        "my.conf, line 2: state_store sqlite:/nonexistent/dir/x.db: "
        "the folder '/nonexistent/dir' does not exist"
    )


def test_a_sqlite_store_in_a_folder_it_cannot_write_is_refused(tmp_path, monkeypatch):
    # The check asks os.access, which says yes to root whatever the mode.
    monkeypatch.setattr(
        "mm7tx.config.reader.os.access", lambda path, mode: path != str(tmp_path)
    )
    text = MINIMAL.replace("}", f'\n state_store = "sqlite:{tmp_path}/x.db"\n}}')
    with pytest.raises(ConfigError, match=r"line 2: .* is not writable$"):
        load(text, "my.conf")


def test_a_sqlite_store_in_a_writable_folder_loads(tmp_path):
    text = MINIMAL.replace("}", f'\n state_store = "sqlite:{tmp_path}/x.db"\n}}')
    assert load(text).state_store.path == f"{tmp_path}/x.db"
    text = MINIMAL.replace("}", '\n state_store = "sqlite:here.db"\n}')
    assert load(text).state_store.path == "here.db"


def test_a_store_password_in_the_url_and_on_its_own_is_refused():
    text = MINIMAL.replace(
        "}",
        '\n state_store = "redis://:one@h"\n state_store_password = "two"\n}',
    )
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    message = str(caught.value)
    assert message.startswith("my.conf, line 2: state_store carries a password")
    assert "one@" not in message
    assert "two" not in message


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


# One declaration per option ------------------------------------------------

README = samples.HERE.parent / "README.md"
MINIMAL = (
    'mm7_serv { mm7_vasp_uri_paths = ("/a/") '
    'mm7_server_default_email_from_domain = "f.example" '
    'mm7_server_default_email_to_domain = "t.example" }'
)


@pytest.mark.parametrize(
    "scope", ["mm7_serv", "HTTP_Listener", "Listen", "VASP", "MMSC", "ESMTP_Listener"]
)
def test_the_readme_option_tables_are_generated_from_the_declarations(scope):
    readme = README.read_text(encoding="utf-8")
    generated = (
        f"<!-- options:{scope} -->\n\n{options_markdown(scope)}\n<!-- /options -->"
    )
    assert generated in readme, (
        "README.md's option tables differ from mm7tx.config.OPTIONS; regenerate "
        "them with mm7tx.config.fill_option_tables (see README.md)"
    )


def test_the_readme_has_nothing_else_between_its_markers():
    readme = README.read_text(encoding="utf-8")
    assert readme.count("<!-- options:") == 6
    assert fill_option_tables(readme) == readme


@pytest.mark.parametrize("scope", ["mm7_serv", "Listen", "VASP", "MMSC"])
def test_an_option_table_is_one_block_with_a_row_per_option(scope):
    rows = options_markdown(scope).rstrip("\n").split("\n")
    assert all(row.startswith("| ") and row.endswith(" |") for row in rows[2:])
    assert len(rows) == 2 + sum(1 for spec in OPTIONS if spec.scope == scope)
    assert "" not in rows  # a blank line would cut the table into paragraphs


def test_every_option_is_documented_in_the_shipped_example():
    example = (samples.HERE.parent / "etc" / "mm7tx.conf").read_text().lower()
    for spec in OPTIONS:
        assert spec.name.lower() in example, spec.name


def test_every_declaration_names_a_real_field():
    targets = {
        "config": Config,
        "rules": AddressRules,
        "smtp": SMTPSettings,
        "xml": XMLLimits,
        "account": Account,
        "access": ListenAccess,
        "mail_in": MailInSettings,
        "submit": SubmitSettings,
    }
    for spec in OPTIONS:
        group, attribute = spec.field.split(".")
        assert attribute in {f.name for f in dataclasses.fields(targets[group])}


@pytest.mark.parametrize(
    "spec", [spec for spec in OPTIONS if spec.default is not None], ids=str
)
def test_a_documented_default_is_the_default(spec):
    base = MINIMAL
    if spec.name == "Listen":
        text = f'HTTP_Listener {{ Listen "{spec.default}" {{ }} }}\n{MINIMAL}'
    elif spec.scope == "MMSC":
        # An upstream MMSC's submit settings, beside its submit_url.
        base = f'{MINIMAL}\nMMSC "up" {{ submit_url = "http://mmsc.example/" }}'
        text = base.removesuffix(" }") + f"\n{spec.name} = {spec.default}\n}}"
    else:
        text = MINIMAL.replace("}", f"\n{spec.name} = {spec.default}\n}}")
    # The same configuration, but for where its listener or relay was written.
    loaded = load(text)
    listeners = tuple(replace(listener, origin="") for listener in loaded.listeners)
    written = replace(loaded, listeners=listeners, smtp_relay_origin="<config>")
    assert written == load(base)


# Errors that involve more than one option name the one at fault ------------


@pytest.mark.parametrize(
    "text, line, words",
    [
        (
            '# no paths\n\nmm7_serv {\n  mm7_server_version = "6.8.0"\n}',
            3,
            "mm7_vasp_uri_paths is required in mm7_serv",
        ),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n mm7_mmsc_uri_paths = ("/a/")\n}',
            3,
            "/a/ is both a VASP path and an MMSC path",
        ),
        (
            'mm7_serv {\n mm7_mmsc_uri_paths = ("/b/")\n mm7_vasp_uri_paths = ("/b/")\n}',
            3,
            "/b/ is both a VASP path and an MMSC path",
        ),
        (
            '\nmm7_serv {\n mm7_vasp_uri_paths = ("/mm7/")\n}',
            3,
            "/mm7/ is both a VASP path and an MMSC path",
        ),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n smtp_username = "u"\n}',
            3,
            "smtp_username is set but smtp_password is not",
        ),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n\n smtp_password = "p"\n}',
            4,
            "smtp_password is set but smtp_username is not",
        ),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n'
            ' Path "/b/" { processor = "mm7tx.processors.EmailProcessor" }\n}',
            3,
            "Path '/b/' is not a configured VASP or MMSC path",
        ),
        (
            f'{MINIMAL}\nVASP "v" {{ password = "p" }}\nVASP "v" {{ password = "q" }}',
            3,
            'VASP "v" is defined twice',
        ),
        (
            f'{MINIMAL}\nVASP "v" {{ password = "p"\n delivery_report_password = "x" }}',
            3,
            "delivery_report_password is set but delivery_report_user is not",
        ),
    ],
)
def test_cross_option_errors_name_the_line_at_fault(text, line, words):
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    assert str(caught.value) == f"my.conf, line {line}: {words}"


# Endpoints, files and URLs checked at load ---------------------------------


def listener(endpoint: str) -> str:
    return f'{MINIMAL}\nHTTP_Listener {{\n  Listen "{endpoint}" {{ }}\n}}'


@pytest.mark.parametrize(
    "endpoint, words",
    [
        ("tcp:99999", "port '99999' is not a number from 0 to 65535"),
        ("tcp:port=70000", "port '70000'"),
        ("haproxy:tcp:65536", "port '65536'"),
        ("8080", "'8080' is not a server endpoint (unknown type '8080')"),
        ("smtp:25", "unknown type 'smtp'"),
        ("tcp:http", "port 'http' is not a number"),
        ("tcp:8080:colour=red", "not a usable endpoint"),
    ],
)
def test_a_bad_listener_is_refused_at_its_line(endpoint, words):
    with pytest.raises(ConfigError) as caught:
        load(listener(endpoint), "my.conf")
    assert str(caught.value).startswith("my.conf, line 3: Listen: ")
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "endpoint, expected",
    [
        (":8080", "tcp:8080"),
        ("*:8080", "tcp:8080"),
        ("192.0.2.1:8080", "tcp:8080:interface=192.0.2.1"),
        ("tcp:0", "tcp:0"),
        ("tcp:65535:interface=127.0.0.1", "tcp:65535:interface=127.0.0.1"),
        ("tcp6:8080:interface=\\\\:\\\\:1", "tcp6:8080:interface=\\:\\:1"),
        ("haproxy:tcp:8080", "haproxy:tcp:8080"),
        ("unix:/tmp/mm7.sock", "unix:/tmp/mm7.sock"),
    ],
)
def test_good_listeners_load(endpoint, expected):
    assert load(listener(endpoint)).listen == (expected,)


def test_an_ssl_listener_needs_its_files(tmp_path):
    cert, key = make_certificate(tmp_path)
    good = f"ssl:8443:privateKey={key}:certKey={cert}"
    assert load(listener(good)).listen == (good,)
    for name in ("privateKey", "certKey", "extraCertChain"):
        missing = tmp_path / f"{name}.pem"
        endpoint = f"ssl:8443:privateKey={key}:certKey={cert}:{name}={missing}"
        with pytest.raises(ConfigError) as caught:
            load(listener(endpoint), "my.conf")
        assert str(caught.value) == (
            f"my.conf, line 3: Listen: cannot read the {name} file "
            f"'{missing}': it does not exist"
        )


def test_an_ssl_listener_with_a_file_that_is_not_a_key_is_refused(tmp_path):
    cert, _ = make_certificate(tmp_path)
    (tmp_path / "junk.pem").write_text("not a key\n")
    endpoint = f"ssl:8443:privateKey={tmp_path / 'junk.pem'}:certKey={cert}"
    with pytest.raises(ConfigError) as caught:
        load(listener(endpoint), "my.conf")
    assert str(caught.value).startswith("my.conf, line 3: Listen: ")
    assert "not a usable endpoint" in str(caught.value)


def relay(endpoint: str) -> str:
    return (
        f'mm7_serv {{\n mm7_vasp_uri_paths = ("/a/")\n smtp_relay = "{endpoint}"\n'
        ' mm7_server_default_email_from_domain = "f.example"\n'
        ' mm7_server_default_email_to_domain = "t.example"\n}'
    )


@pytest.mark.parametrize(
    "endpoint, words",
    [
        (
            "smtp://relay.example:25",
            "'smtp://relay.example:25' is a URL, not an endpoint",
        ),
        ("relay.example:25", "unknown endpoint type: 'relay.example'"),
        ("tcp:relay.example:99999", "port '99999' is not a number from 0 to 65535"),
        ("tls:relay.example:0x1d1", "port '0x1d1'"),
        ("tcp:relay.example", "not a client endpoint"),
        ("maildir:", "maildir: needs a folder"),
    ],
)
def test_a_bad_relay_is_refused_at_its_line(endpoint, words):
    with pytest.raises(ConfigError) as caught:
        load(relay(endpoint), "my.conf")
    assert str(caught.value).startswith("my.conf, line 3: smtp_relay: ")
    assert words.lower() in str(caught.value).lower()


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:127.0.0.1:25",
        "tcp:host=relay.example:port=2525",
        "tls:relay.example:465",
        "maildir:/var/spool/mm7tx",
        "maildir:Maildir",
    ],
)
def test_good_relays_load(endpoint):
    assert load(relay(endpoint)).smtp.endpoint == endpoint


def test_smtp_ca_file_must_be_a_readable_certificate(tmp_path):
    cert, _ = make_certificate(tmp_path)

    def text(path):
        return MINIMAL.replace("}", f'\n smtp_ca_file = "{path}"\n}}')

    assert load(text(cert)).smtp.ca_file == str(cert)
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError) as caught:
        load(text(missing), "my.conf")
    assert str(caught.value) == (
        f"my.conf, line 2: smtp_ca_file: cannot read '{missing}': "
        "No such file or directory"
    )
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match=r"line 2: smtp_ca_file: .* is not a PEM"):
        load(text(tmp_path / "junk.pem"), "my.conf")


def report_url(url: str) -> str:
    return (
        f'{MINIMAL}\nVASP "v" {{\n password = "p"\n delivery_report_url = "{url}"\n}}'
    )


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://vasp.example/dr", "must be an http(s) URL with a host"),
        ("http:///dr", "must be an http(s) URL with a host"),
        ("vasp.example/dr", "must be an http(s) URL with a host"),
        ("https://vasp.example:99999/dr", "port that is not 0 to 65535"),
        ("https://mmsc:s3cr3t@vasp.example:99999/dr", "port that is not 0 to"),
        ("ftp://mmsc:s3cr3t@vasp.example/dr", "must be an http(s) URL"),
    ],
)
def test_a_bad_delivery_report_url_is_refused_at_its_line(url, words):
    with pytest.raises(ConfigError) as caught:
        load(report_url(url), "my.conf")
    assert str(caught.value).startswith("my.conf, line 4: delivery_report_url ")
    assert words in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    "url, user, password",
    [
        ("http://mmsc:s3cr3t@vasp.example/dr", "mmsc", "s3cr3t"),
        ("http://mm%3Asc:s3%40cr%2Fet@vasp.example/dr", "mm:sc", "s3@cr/et"),
        ("http://mmsc@vasp.example/dr", "mmsc", ""),
    ],
)
def test_credentials_in_a_delivery_report_url_are_basic_credentials(
    url, user, password
):
    [account] = load(report_url(url)).vasps
    assert account.delivery_report_url == "http://vasp.example/dr"
    assert (account.delivery_report_user, account.delivery_report_password) == (
        user,
        password,
    )
    assert "s3" not in repr(account)


@pytest.mark.parametrize(
    "option", ['delivery_report_user = "u"', 'delivery_report_password = "p"']
)
def test_credentials_both_in_the_url_and_apart_are_refused(option):
    text = report_url("http://mmsc:s3cr3t@vasp.example/dr").replace(
        "\n}", f"\n {option}\n}}"
    )
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    assert str(caught.value) == (
        "my.conf, line 4: delivery_report_url carries credentials "
        "(user:password@) and delivery_report_user or delivery_report_password "
        "is set too; keep one"
    )


def test_command_line_endpoints_are_checked_and_named():
    config = load(EXAMPLE_7_1)
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, ["tcp:8080", "8080"])
    assert str(caught.value).startswith("--listen: '8080' is not a server endpoint")
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, smtp_relay="smtp://x")
    assert str(caught.value).startswith("--smtp-relay: 'smtp://x' is a URL")
    with pytest.raises(ConfigError, match=r"^--listen: port '99999'"):
        with_overrides(config, ["tcp:99999"])


# Encodings -----------------------------------------------------------------


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.conf"
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE_7_1.encode())
    assert load_file(str(path)).mm7_version == "6.8.0"
    assert load("\ufeff" + EXAMPLE_7_1).mm7_version == "6.8.0"


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(
        b'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n'
        b' mm7_server_default_email_from_address = "Ren\xe9@example.com"\n}\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_file(str(path))
    assert (
        str(caught.value) == f"{path}, line 3: the file is not UTF-8 text (byte 0xe9)"
    )


def test_a_systemd_listener_without_a_passed_socket_says_so() -> None:
    text = (
        'HTTP_Listener { Listen "systemd:domain=INET:index=0" { } }\n'
        'mm7_serv { mm7_vasp_uri_paths = ("/v/") }'
    )
    with pytest.raises(ConfigError) as caught:
        load(text, "sd.conf")
    assert str(caught.value) == (
        "sd.conf, line 1: Listen: 'systemd:domain=INET:index=0': systemd passed "
        "no socket with that index (LISTEN_FDS); start mm7tx from a .socket unit "
        "or with systemd-socket-activate"
    )


def test_an_option_set_twice_is_refused_at_its_second_line() -> None:
    text = (
        "mm7_serv {\n"
        '  mm7_vasp_uri_paths = ("/a/")\n'
        '  MM7_VASP_URI_PATHS = ("/b/")\n'
        "}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(text, "twice.conf")
    assert str(caught.value) == (
        "twice.conf, line 3: mm7_vasp_uri_paths is set twice (first on line 2); "
        "keep one"
    )


@pytest.mark.parametrize(
    "missing, role",
    [
        ("mm7_server_default_email_from_domain", "sender"),
        ("mm7_server_default_email_to_domain", "recipient"),
    ],
)
def test_vasp_paths_that_could_not_map_a_number_are_refused(missing, role):
    """Without a domain or an address for a side, every DeliverReq from (or
    to) a Number or ShortCode would be answered 2002."""
    text = "\n" + re.sub(missing + r' = "[^"]*"', "", MINIMAL)
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    side = missing.rsplit("_", 2)[-2]
    assert str(caught.value) == (
        f"my.conf, line 2: mm7_serv needs {missing} (or "
        f"mm7_server_default_email_{side}_address): without either, every "
        f"message whose {role} is a number is refused (2002)"
    )
    address = missing.replace("_domain", "_address")
    assert load(MINIMAL.replace(missing, address)).vasp_paths == ("/a/",)


# Messages that help a reader fix the file -------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n smtp_max_conections = 5\n}',
            "my.conf, line 3: unknown mm7_serv option 'smtp_max_conections'; "
            "did you mean 'smtp_max_connections'?",
        ),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n MM7_Keep_Smill = true\n}',
            "my.conf, line 3: unknown mm7_serv option 'MM7_Keep_Smill'; "
            "did you mean 'mm7_keep_smil'?",
        ),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }\nVASP "v" { pasword = "p" }',
            "my.conf, line 2: unknown VASP option 'pasword'; did you mean 'password'?",
        ),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }\nMMSC "m" {\n alowed_networks = ("10.0.0.1")\n}',
            "my.conf, line 3: unknown MMSC option 'alowed_networks'; "
            "did you mean 'allowed_networks'?",
        ),
        (
            'HTTP_Listener { Listen ":1" { always_alow = ("10.0.0.1") } }\n'
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }',
            "my.conf, line 1: unknown Listen option 'always_alow'; "
            "did you mean 'always_allow'?",
        ),
        (
            'mm7_servv { mm7_vasp_uri_paths = ("/a/") }',
            "my.conf, line 1: unknown scope 'mm7_servv'; did you mean 'mm7_serv'?",
        ),
        (
            'mm7_serv { mm7_vasp_uri_paths = ("/a/") }\nsmtp_relay = "tcp:h:25"',
            "my.conf, line 2: unknown top-level option 'smtp_relay'; it belongs "
            "in mm7_serv { }",
        ),
        (
            'mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n nonsense = 1\n}',
            "my.conf, line 3: unknown mm7_serv option 'nonsense'",
        ),
    ],
)
def test_an_unknown_name_suggests_the_closest_valid_one(text, message):
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "text, line",
    [
        ('mm7_serv {\n mm7_vasp_uri_paths = ("/a/)\n}', 2),
        ('mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n smtp_helo = "x', 3),
        ('mm7_serv {\n mm7_vasp_uri_paths = ("/a/")\n smtp_helo = "x\\"\n}', 3),
    ],
)
def test_a_missing_closing_quote_is_an_unterminated_string_where_it_starts(text, line):
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    assert str(caught.value) == (
        f"my.conf, line {line}: unterminated string (no closing '\"' on this line)"
    )


@pytest.mark.parametrize(
    "option, given, accepted",
    [
        ("smtp_starttls", "yes", "off, opportunistic or required"),
        ("smtp_starttls", "no", "off, opportunistic or required"),
        ("smtp_starttls", "when_offered", "off, opportunistic or required"),
        ("mm7_keep_smil", "yes", "true or false"),
        ("mm7_keep_smil", "on", "true or false"),
        ("mm7_access_log", "1", "true or false"),
        ("mm7_access_log", "no", "true or false"),
    ],
)
def test_an_alias_of_a_boolean_or_enumerated_value_is_refused_with_the_accepted_ones(
    option, given, accepted
):
    text = f'mm7_serv {{\n mm7_vasp_uri_paths = ("/a/")\n {option} = {given}\n}}'
    with pytest.raises(ConfigError) as caught:
        load(text, "my.conf")
    assert str(caught.value) == (
        f"my.conf, line 3: {option} must be {accepted}, not {given!r}"
    )


@pytest.mark.parametrize(
    "option, given, value",
    [
        ("smtp_starttls", "Required", "required"),
        ("smtp_starttls", '"off"', "off"),
        ("mm7_keep_smil", "TRUE", True),
        ("mm7_keep_smil", "false", False),
    ],
)
def test_the_documented_values_are_read_in_any_case(option, given, value):
    config = load(EXAMPLE_7_1.replace("}", f" {option} = {given}\n}}"))
    if option == "smtp_starttls":
        assert config.smtp.starttls == value
    else:
        assert config.keep_smil is value


def test_every_enumerated_option_lists_its_values_in_the_readme_table():
    rows = {spec.name: spec.markdown_row() for spec in OPTIONS}
    assert "`off`, `opportunistic`" in rows["smtp_starttls"]
    assert "`required`" in rows["smtp_starttls"]
    for name in ("mm7_keep_smil", "mm7_access_log"):
        assert "`true` or `false`" in rows[name]


def test_the_relay_option_s_line_is_kept_for_errors_found_later(tmp_path):
    text = EXAMPLE_7_1.replace("}", '  smtp_relay = "maildir:/proc/x"\n}')
    line = text[: text.index("smtp_relay")].count("\n") + 1
    assert load(text, "my.conf").smtp_relay_origin == f"my.conf, line {line}"
    assert load(EXAMPLE_7_1, "my.conf").smtp_relay_origin == "my.conf"
    overridden = with_overrides(load(text, "my.conf"), smtp_relay="maildir:M")
    assert overridden.smtp_relay_origin == "--smtp-relay"
    assert EMBEDDED.smtp_relay_origin == "embedded defaults"


@pytest.mark.parametrize(
    ("listener", "kind"),
    [
        ("tcp:8080", "tcp"),
        ("haproxy:tcp:8080:interface=127.0.0.1", "tcp"),
        ("haproxy:haproxy:systemd:domain=INET:index=0", "systemd"),
        ("haproxy", "haproxy"),
    ],
)
def test_the_endpoint_under_any_haproxy_is_read_in_one_place(listener, kind):
    from mm7tx.config import inner_endpoint

    found, _, keywords = inner_endpoint(listener)
    assert found == kind
    if "interface=" in listener:
        assert keywords["interface"] == "127.0.0.1"
