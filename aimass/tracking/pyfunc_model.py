"""The MLflow pyfunc of an aimass model, logged as code (MLflow "models from code").

MLflow stores this source file rather than a pickled object; weights load through
:func:`aimass.models.io.load_model` (safetensors or ``weights_only`` state dicts).
"""

import mlflow
from mlflow.pyfunc import PythonModel


class AimassModel(PythonModel):
    def load_context(self, context):
        from aimass.models.io import load_model

        self.model = load_model(context.artifacts["model_dir"])
        self.input_name = self.model.card.input_name

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        x = model_input[self.input_name] if isinstance(model_input, dict) else model_input
        if getattr(self.model.card, "input_kind", "tensor") in ("text", "image"):  # raw input: the model preprocesses it
            x = x.iloc[:, 0].to_numpy() if hasattr(x, "iloc") else np.asarray(x)
            return self.model.predict_proba(x).numpy()
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return self.model.predict_proba(x).numpy()


mlflow.models.set_model(AimassModel())
