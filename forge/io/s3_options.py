"""A recipe's fsspec options for S3 sources (as pangeo-forge recipes give them: ``netcdf_storage_options``,
``OpenWithKerchunk(storage_options=...)``), mapped onto the readers references use: obstore, which reads
each input's metadata, and Icechunk's virtual chunk containers and fsspec's reference filesystem, which
read the chunks later.

Anonymous access, a custom endpoint (an S3-compatible service such as OSN or MinIO), the region and
requester-pays are kept with the references, so their readers need nothing more. Credentials are given by
secret name (``{"key": Secret("LIVEOCEAN_KEY"), "secret": Secret("LIVEOCEAN_SECRET")}``), resolved only
where a source is read, and never written anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forge.errors import RecipeError
from forge.io.secrets import Lookup, Secret, check_no_plain_secrets, resolve

# fsspec/s3fs option -> where it is read from (client_kwargs' names too)
ENDPOINT_KEYS = ("endpoint_url",)
REGION_KEYS = ("region_name", "region")
CREDENTIAL_KEYS = {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token"}
KNOWN = {"anon", "requester_pays", "client_kwargs", "endpoint_url", "region", *CREDENTIAL_KEYS}


@dataclass(frozen=True)
class S3Options:
    """How S3 sources are read: the public part (kept with the references) and credentials by name."""

    anonymous: bool = False
    endpoint: str | None = None
    region: str | None = None
    requester_pays: bool = False
    credentials: tuple[tuple[str, Secret], ...] = ()  # (obstore's key name, the secret that holds it)

    @classmethod
    def from_fsspec(cls, options: Mapping[str, Any], where: str = "storage_options") -> S3Options:
        """From s3fs-style options; anything else is refused, naming the key.

        Examples
        --------
        >>> options = S3Options.from_fsspec({"anon": True, "client_kwargs": {"endpoint_url": "https://osn"}})
        >>> options.anonymous, options.endpoint, options.public
        (True, 'https://osn', {'anon': True, 'client_kwargs': {'endpoint_url': 'https://osn'}})
        """
        unknown = sorted(set(options) - KNOWN)
        client = dict(options.get("client_kwargs") or {})
        unknown += [f"client_kwargs.{k}" for k in sorted(set(client) - {*ENDPOINT_KEYS, *REGION_KEYS})]
        if unknown:
            raise RecipeError(
                f"{where}: {', '.join(unknown)}: not an option forge reads S3 sources with (it knows anon, "
                "endpoint_url, region, requester_pays, and key, secret and token given as Secret(...))"
            )
        check_no_plain_secrets({k: options[k] for k in CREDENTIAL_KEYS if k in options}, where)
        endpoint = options.get("endpoint_url") or client.get("endpoint_url")
        region = options.get("region") or client.get("region_name") or client.get("region")
        return cls(
            anonymous=bool(options.get("anon", False)),
            endpoint=str(endpoint) if endpoint else None,
            region=str(region) if region else None,
            requester_pays=bool(options.get("requester_pays", False)),
            credentials=tuple((CREDENTIAL_KEYS[k], options[k]) for k in CREDENTIAL_KEYS if k in options),
        )

    @property
    def public(self) -> dict[str, Any]:
        """The options without credentials, as s3fs takes them: what a reader of the references needs."""
        options: dict[str, Any] = {}
        if self.anonymous:
            options["anon"] = True
        if self.requester_pays:
            options["requester_pays"] = True
        client = {"endpoint_url": self.endpoint} if self.endpoint else {}
        client |= {"region_name": self.region} if self.region else {}
        if client:
            options["client_kwargs"] = client
        return options

    def obstore_config(self, lookup: Lookup) -> dict[str, Any]:
        """Keyword arguments for ``obstore.store.from_url`` of an ``s3://`` prefix."""
        config: dict[str, Any] = {}
        if self.anonymous:
            config["skip_signature"] = True
        if self.endpoint:
            config["endpoint"] = self.endpoint
            config["client_options"] = {"allow_http": self.endpoint.startswith("http://")}
        if self.region:
            config["region"] = self.region
        if self.requester_pays:
            config["request_payer"] = True
        config |= {name: resolve(secret, lookup) for name, secret in self.credentials}
        return config
