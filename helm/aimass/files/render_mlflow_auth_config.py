"""Write MLflow's basic-auth configuration file from the environment.

Runs as the init container of the MLflow pod. The credentials arrive as environment variables
from existing Secrets and are written only to a memory-backed emptyDir shared with the server,
so no secret ever appears in a ConfigMap, in values.yaml or in the pod spec.
"""

import configparser
import os


def _escape(value: str) -> str:
    # MLflow reads the file with ConfigParser's default interpolation, where "%" is special.
    return value.replace("%", "%%")


def main() -> None:
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": os.environ["MLFLOW_AUTH_DEFAULT_PERMISSION"],
        # The user store shares the tracking database (its own tables and alembic_version_auth).
        "database_uri": _escape(os.environ["MLFLOW_BACKEND_STORE_URI"]),
        "admin_username": _escape(os.environ["MLFLOW_AUTH_ADMIN_USERNAME"]),
        "admin_password": _escape(os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    path = os.environ["MLFLOW_AUTH_CONFIG_PATH"]
    os.umask(0o077)
    with open(path, "w", encoding="utf-8") as handle:
        config.write(handle)
    print(f"wrote MLflow basic-auth configuration to {path}")


if __name__ == "__main__":
    main()
