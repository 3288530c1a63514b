"""NetBox's own setup for tests/real/netbox.sh: users and tokens, made by
NetBox's models (so every digest is NetBox's, under its API_TOKEN_PEPPERS).

Run with the NetBox venv's python, NETBOX_ROOT and NETBOX_CONFIGURATION set.
Writes the tokens as JSON to the file named by argv[1] (mode 600); prints
nothing secret.
"""

import json
import os
import sys
import time
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netbox.settings")
import django  # noqa: E402

django.setup()

from django.utils import timezone  # noqa: E402
from netaddr import IPNetwork  # noqa: E402
from users.models import Token, User  # noqa: E402


def user(name, superuser=True):
    u, _ = User.objects.get_or_create(username=name, defaults={"email": f"{name}@example.com"})
    u.is_superuser = superuser
    u.is_staff = superuser
    u.is_active = True
    u.set_password(os.environ["NETBOX_TEST_PASSWORD"])
    u.save()
    return u


def v2(u, description, write_enabled=True, **fields):
    t = Token(user=u, description=description, write_enabled=write_enabled, **fields)
    t.full_clean()
    t.save()
    # What a client sends: the header prefix NetBox itself names, then the secret.
    prefix = t.get_auth_header_prefix()
    assert prefix.startswith("Bearer nbt_"), prefix
    return {"id": t.pk, "token": prefix.removeprefix("Bearer ") + t.token}


def v1(u, description):
    t = Token(user=u, version=1, description=description)
    t.full_clean()
    t.save()
    return {"id": t.pk, "token": t.token}


EXPIRES_S = 40
admin = user("admin")
reader = user("reader")
temp = user("contractor")
out = {
    "admin": v2(admin, "automation"),
    "reader": v2(reader, "reporting", write_enabled=False),
    "revoke": v2(admin, "to be deleted"),
    "contractor": v2(temp, "contractor's script"),
    # Expires while the checks run (NetBox refuses a past expiry).
    "expiring": v2(admin, "expires soon", expires=timezone.now() + timedelta(seconds=EXPIRES_S)),
    "elsewhere": v2(admin, "from the office only", allowed_ips=[IPNetwork("10.0.0.0/8"), IPNetwork("192.168.0.0/16")]),
}
out["expiring"]["made"] = time.time()
out["expiring"]["expires_s"] = EXPIRES_S
try:
    out["v1"] = v1(admin, "legacy v1")
except Exception as e:  # a NetBox that no longer makes v1 tokens
    out["v1_error"] = f"{type(e).__name__}: {e}"

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(out, f)
