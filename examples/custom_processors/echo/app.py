"""An example processor on the platform's Python API: it answers the body back, upper-cased.

Serve it with `llm-runtime serve --processor-entry examples/custom_processors/echo/app.py`,
or run it directly: `python examples/custom_processors/echo/app.py --port 8000`.
"""

import json
import os

import allspark


class EchoProcessor(allspark.BaseProcessor):
    def initialize(self):
        model_dir = self.get_model_path().decode()
        self.model_files = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []

    def process(self, data):
        if not data:
            return b"send a body to echo", 400
        answer = {"echo": data.decode("utf-8", "replace").upper(), "model_files": self.model_files}
        return json.dumps(answer).encode(), 200


if __name__ == "__main__":
    EchoProcessor(worker_threads=4).run()
