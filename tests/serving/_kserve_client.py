"""Run by test_kserve_sdk in a subprocess whose sys.path has the KServe SDK (it cannot share the test
venv: kserve 0.21 pins other pandas/psutil/protobuf versions). Prints one JSON line of results."""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    out = {}
    for mode in ("json", "binary"):
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=mode == "binary")
        res = await client.infer(url, InferRequest(model_name="digits", infer_inputs=[inp], request_id=f"k-{mode}"),
                                 model_name="digits", headers=dict(auth))
        out[mode] = {"id": res.id, "model_name": res.model_name, "probabilities": res.outputs[0].as_numpy().tolist()}
    inp = InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    try:  # the body names another model than the path
        await client.infer(url, InferRequest(model_name="other", infer_inputs=[inp]), model_name="digits", headers=dict(auth))
        out["other"] = "accepted"
    except Exception as e:  # noqa: BLE001 - httpx.HTTPStatusError: report its status and body
        resp = getattr(e, "response", None)
        out["other"] = {"status": getattr(resp, "status_code", None), "body": resp.json() if resp is not None else str(e)}
    await client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
