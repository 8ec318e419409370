# The three data hops (0.1.0 -> 1.0.0 -> 2.0.0 -> 2.1.0) as one jq program, for request-log
# records: the baseline `migrate` is compared with. API-key hashing is left out (jq has no
# sha256, and request logs hold no keys).
def hop1: . + {schema_version: 1};

def timestamps:
  walk(if type == "object" then
         with_entries(if ((.key == "timestamp") or (.key | endswith("_at"))) and (.value | type == "number")
                      then .value |= todate else . end)
       else . end);

def usage:
  if has("prompt_tokens") or has("completion_tokens") then
    ((if has("prompt_tokens") then {input_tokens: .prompt_tokens} else {} end)
     + (if has("completion_tokens") then {output_tokens: .completion_tokens} else {} end)) as $u
    | (if has("prompt_tokens") then "prompt_tokens" else "completion_tokens" end) as $anchor
    | [to_entries[] | if .key == $anchor then {key: "usage", value: $u}
                      elif .key == "prompt_tokens" or .key == "completion_tokens" then empty
                      else . end] | from_entries
  else . end;

def hop2: timestamps | usage | .schema_version = 2;

def metrics:
  if has("latency_ms") then
    .latency_ms as $l | .usage.output_tokens as $o
    | {latency_ms: $l,
       tokens_per_second: (if $l == 0 or $o == null then null else ($o / ($l / 1000) * 100 | round / 100) end)} as $m
    | [to_entries[] | if .key == "latency_ms" then {key: "metrics", value: $m} else . end] | from_entries
  else . end;

def hop3: metrics | .schema_version = 3;

hop1 | hop2 | hop3
