"""Structured outputs on the tiny random model: its logits are noise, yet
every answer held to a JSON Schema validates against it (100 of 100), the
openai client's `chat.completions.parse` round-trips a pydantic model,
streaming gives the same JSON, and a forced tool call always parses."""

import json
import os
import unittest
from typing import Literal

os.environ["HF_HUB_OFFLINE"] = "1"

import jsonschema
import openai
import pydantic

from server.harness import TinyServerCase

USER = [{"role": "user", "content": "Answer in JSON."}]
SLOTS = 10


def strict(properties, **extra):
    """An object as OpenAI's strict mode writes one: every key required, no others."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


# Every string, number and array is bounded: a model with random logits
# closes a free string only by chance, and would run past max_tokens.
SCHEMAS = {
    "nested objects": strict(
        {
            "user": strict(
                {
                    "name": {"type": "string", "maxLength": 6},
                    "home": strict(
                        {
                            "city": {"enum": ["Paris", "Lima", "Oslo"]},
                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                        }
                    ),
                }
            )
        }
    ),
    "arrays": {
        "type": "array",
        "items": {"type": "integer", "minimum": -5, "maximum": 5},
        "minItems": 1,
        "maxItems": 4,
    },
    "array of objects": strict(
        {
            "points": {
                "type": "array",
                "items": strict({"x": {"type": "integer", "minimum": 0, "maximum": 9}}),
                "maxItems": 3,
            }
        }
    ),
    "enums": {"enum": ["red", "green", 3, None, True]},
    "anyOf": {
        "anyOf": [
            {"type": "string", "maxLength": 4},
            {"type": "integer", "minimum": 0, "maximum": 99},
            {"type": "null"},
        ]
    },
    "$ref": strict(
        {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        **{"$defs": {"point": strict({"x": {"type": "boolean"}, "y": {"const": "y"}})}},
    ),
    "string formats": strict(
        {
            "day": {"type": "string", "format": "date"},
            "id": {"type": "string", "format": "uuid"},
            "ip": {"type": "string", "format": "ipv4"},
        }
    ),
    "numeric bounds": strict(
        {
            "i": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
            "j": {"type": "integer", "minimum": -300, "maximum": -200},
            "b": {"type": "boolean"},
        }
    ),
    "optional keys": {
        "type": "object",
        "properties": {
            "tag": {"type": "string", "pattern": "^[a-z]{2}$"},
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 3},
        },
        "required": ["tag"],
        "additionalProperties": False,
    },
    "type lists and const": strict(
        {"v": {"const": 1}, "w": {"type": ["boolean", "null"]}, "s": {"enum": ["a", "b"]}}
    ),
}


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=6)
    kind: Literal["cat", "dog"]
    age: int = pydantic.Field(ge=0, le=20)
    tags: list[Literal["cute", "old"]] = pydantic.Field(max_length=2)


class StructuredTest(TinyServerCase):
    FLAGS = ["--parallel", str(SLOTS)]

    def chat(self, **kw):
        kw.setdefault("max_tokens", 200)
        return self.client.chat.completions.create(model=self.model, messages=USER, **kw)

    @staticmethod
    def fmt(schema):
        return {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": schema, "strict": True},
        }

    def test_a_random_model_obeys_every_schema(self):
        ok = 0
        for name, schema in SCHEMAS.items():
            check = jsonschema.Draft202012Validator(
                schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
            r = self.chat(response_format=self.fmt(schema), n=SLOTS, temperature=1.0, seed=7)
            for c in r.choices:
                text = c.message.content
                self.assertEqual(c.finish_reason, "stop", f"{name}: {text!r}")
                check.validate(json.loads(text))
                ok += 1
        self.assertEqual(ok, 100)

    def test_completions_and_json_mode(self):
        schema = SCHEMAS["nested objects"]
        r = self.client.completions.create(
            model=self.model,
            prompt="JSON:",
            max_tokens=200,
            n=4,
            seed=1,
            temperature=1.0,
            extra_body={"response_format": self.fmt(schema)},
        )
        for c in r.choices:
            jsonschema.validate(json.loads(c.text), schema)
        # Any JSON object: keys and strings are free, so some random answers
        # run to max_tokens; each that ends is an object.
        r = self.chat(response_format={"type": "json_object"}, n=SLOTS, seed=3, temperature=1.0)
        ended = [c.message.content for c in r.choices if c.finish_reason == "stop"]
        self.assertTrue(ended)
        for text in ended:
            self.assertIsInstance(json.loads(text), dict)

    def test_streamed_equals_whole(self):
        fmt = self.fmt(SCHEMAS["array of objects"])
        whole = self.chat(response_format=fmt, seed=5, temperature=1.0).choices[0].message.content
        chunks = list(self.chat(response_format=fmt, seed=5, temperature=1.0, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertEqual(text, whole)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        jsonschema.validate(json.loads(text), SCHEMAS["array of objects"])

    def test_openai_parse_round_trips_a_pydantic_model(self):
        for seed in range(4):
            r = self.client.chat.completions.parse(
                model=self.model,
                messages=USER,
                response_format=Pet,
                max_tokens=200,
                seed=seed,
                temperature=1.0,
            )
            pet = r.choices[0].message.parsed
            self.assertIsInstance(pet, Pet)
            self.assertEqual(Pet.model_validate_json(r.choices[0].message.content), pet)

    def test_a_schema_the_engine_lacks_is_a_400_naming_it(self):
        bad = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
        with self.assertRaises(openai.BadRequestError) as cm:
            self.chat(response_format=self.fmt(bad))
        self.assertIn("uniqueItems", cm.exception.message)
        # Still serving.
        r = self.chat(response_format=self.fmt(SCHEMAS["enums"]), seed=1)
        self.assertIn(json.loads(r.choices[0].message.content), SCHEMAS["enums"]["enum"])

    def test_forced_tool_calls_from_a_random_model_parse_and_fit(self):
        weather = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": strict(
                    {
                        "location": {"type": "string", "maxLength": 12},
                        "unit": {"enum": ["c", "f"]},
                        "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    }
                ),
            },
        }
        r = self.chat(tools=[weather], tool_choice="required", n=SLOTS, seed=11, temperature=1.0)
        for c in r.choices:
            self.assertEqual(c.finish_reason, "tool_calls", c)
            (call,) = c.message.tool_calls
            self.assertEqual(call.function.name, "get_weather")
            jsonschema.validate(
                json.loads(call.function.arguments), weather["function"]["parameters"]
            )


if __name__ == "__main__":
    unittest.main()
