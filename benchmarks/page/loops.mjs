// Benchmark driver shared by the Chromium bench page (index.html) and Node + Dawn (../gpu/node_bench.mjs).
//
// It loads the project's runtime wheel into Pyodide, opens the model through the runtime's own browser backend
// (lfmvl_site.runtime.browser.PageRuntime: same session options, same feeds), and then times
//   * the Python loop: PageRuntime.caption, i.e. the real Captioner over the browser backend;
//   * a minimal pure-JS loop driving the SAME onnxruntime-web sessions with the same feeds and reads;
//   * optionally ("direct") the JS loop feeding embed_tokens' output tensor straight into the decoder.

const TYPED = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array, int32: Int32Array };

export function makeBench({ loadPyodide, ort, indexURL, lockFileURL, readBytes, readText, pySource }) {
  let py = null;
  let mod = null;

  async function init({ packages, wheel, threads }) {
    const t0 = performance.now();
    ort.env.wasm.numThreads = threads;
    py = await loadPyodide({ indexURL, lockFileURL, stdout: () => {}, stderr: (t) => console.warn(t) });
    await py.loadPackage(packages, { messageCallback: () => {} });
    await py.loadPackage(wheel, { messageCallback: () => {} });
    py.FS.writeFile("/home/pyodide/lfmvl_bench.py", await pySource());
    py.runPython("import sys; sys.path.insert(0, '/home/pyodide')");
    mod = py.pyimport("lfmvl_bench");
    return { init_ms: performance.now() - t0, threads: ort.env.wasm.numThreads };
  }

  function preprocess({ w, h, reps, processorJson }) {
    return JSON.parse(mod.time_preprocess(w, h, reps, processorJson));
  }

  async function load({ modelUrl, device, features }) {
    const t0 = performance.now();
    const fetchBytes = async (url) => readBytes(url);
    const fetchText = async (url) => readText(url);
    const info = JSON.parse(await mod.load(ort, modelUrl, device, py.toPy(features || []), fetchBytes, fetchText));
    return { ...info, load_ms: performance.now() - t0 };
  }

  // The Python loop: the page's own entry point (frame copy in, preprocess, prompt, vision, prefill, decode).
  async function pyLoop({ w, h, tokens, prompt }) {
    const rgba = mod.frame_js(w, h);
    const settings = JSON.stringify({ max_new_tokens: tokens });
    const t0 = performance.now();
    const res = JSON.parse(await mod.caption(rgba, w, h, prompt, settings));
    const wall = performance.now() - t0;
    if (res.error) throw new Error(res.error);
    const t = res.timings;
    const decodeWall = wall - t.first_token_ms - (t.frame_copy_ms || 0);
    return {
      tokens: res.token_ids.length,
      wall_ms: wall,
      first_token_ms: t.first_token_ms,
      preprocess_ms: t.preprocess_ms,
      vision_ms: t.vision_ms,
      prefill_ms: t.prefill_ms,
      step_ms: t.token_ms.slice(1),
      // Everything after the prefill, tokenizer decode and callbacks included, per generated token.
      decode_wall_per_token_ms: decodeWall / Math.max(1, t.token_ms.length - 1),
      token_ids: res.token_ids,
    };
  }

  async function toArray(t) {
    return t.location === "cpu" ? t.data : await t.getData();
  }

  // A minimal JS loop over the same sessions: prefill from the same merged embeddings, then per token
  // embed_tokens → decoder (caches kept as ort tensors) → next id; no Python, no tokenizer.
  async function jsLoop({ w, h, tokens, prompt, direct = false }) {
    const s = mod.sessions().toJs({ dict_converter: Object.fromEntries, create_pyproxies: false });
    const emb = await mod.prompt_embeds(w, h, prompt);
    const dec = s.decoder, et = s.embed_tokens;
    const inNames = dec.inputNames, outNames = dec.outputNames;
    const meta = Object.fromEntries(inNames.map((n, i) => [n, (dec.inputMetadata || [])[i] || {}]));
    const cacheMap = {};
    for (const n of inNames) {
      if (["input_ids", "inputs_embeds", "attention_mask", "position_ids"].includes(n)) continue;
      cacheMap[n] = n.startsWith("past_key_values.") ? "present." + n.slice(16) : "present_" + n.slice(5);
    }
    const hasPos = inNames.includes("position_ids");
    const argmax = outNames.includes("next_token");
    const read = argmax ? ["next_token"] : ["logits"];
    const fetches = [...read, ...Object.values(cacheMap)];
    const runOptions = { logSeverityLevel: 2 };
    let caches = {};
    for (const [past] of Object.entries(cacheMap)) {
      const m = meta[past];
      const shape = (m.shape || []).map((d) => (typeof d === "number" && d >= 0 ? d : (typeof d === "string" && d.includes("sequence") ? 0 : 1)));
      const n = shape.reduce((a, b) => a * b, 1);
      caches[past] = new ort.Tensor(m.type || "float32", new TYPED[m.type || "float32"](n), shape);
    }
    const etOut = et.outputNames[0];
    let length = emb.shape[1];
    let input = new ort.Tensor("float32", emb.data, emb.shape);
    const ids = [];
    const stepMs = [];
    let prefillMs = 0;
    const t0 = performance.now();
    for (let step = 0; step < tokens; step++) {
      const a = performance.now();
      let embOut = null;
      if (step > 0) {
        const idT = new ort.Tensor("int64", BigInt64Array.from([BigInt(ids[ids.length - 1])]), [1, 1]);
        const r = await et.run({ input_ids: idT }, [etOut], runOptions);
        idT.dispose();
        embOut = r[etOut];
        if (direct) {
          input = embOut;
        } else {  // same data path as the Python backend: read back, new input tensor
          input = new ort.Tensor("float32", new Float32Array(await toArray(embOut)), embOut.dims);
          embOut.dispose();
          embOut = null;
        }
        length += 1;
      }
      const feeds = { inputs_embeds: input, attention_mask: new ort.Tensor("int64", new BigInt64Array(length).fill(1n), [1, length]), ...caches };
      if (hasPos) {
        const cur = input.dims[1];
        const p = new BigInt64Array(cur);
        for (let i = 0; i < cur; i++) p[i] = BigInt(length - cur + i);
        feeds.position_ids = new ort.Tensor("int64", p, [1, cur]);
      }
      const out = await dec.run(feeds, fetches, runOptions);
      for (const [past, present] of Object.entries(cacheMap)) { if (step > 0) caches[past].dispose(); caches[past] = out[present]; }
      let tok;
      if (argmax) {
        const d = await toArray(out.next_token);
        tok = Number(d[d.length - 1]);
      } else {
        const d = await toArray(out.logits);
        const V = out.logits.dims[out.logits.dims.length - 1];
        let best = 0, bi = 0;
        for (let i = d.length - V; i < d.length; i++) if (i === d.length - V || d[i] > best) { best = d[i]; bi = i - (d.length - V); }
        tok = bi;
      }
      out[read[0]].dispose();
      feeds.attention_mask.dispose();
      if (feeds.position_ids) feeds.position_ids.dispose();
      input.dispose();
      ids.push(tok);
      const ms = performance.now() - a;
      if (step === 0) prefillMs = ms; else stepMs.push(ms);
    }
    const wall = performance.now() - t0;
    for (const c of Object.values(caches)) c.dispose();
    return {
      tokens: ids.length, prefill_ms: prefillMs, step_ms: stepMs,
      decode_wall_per_token_ms: (wall - prefillMs) / Math.max(1, tokens - 1), token_ids: ids,
    };
  }

  // The Python loop with timers around each part (bench_py.profile), per decode token. The token callback
  // posts what the worker posts, to a MessageChannel port (the worker's postMessage stand-in).
  async function profile({ w, h, tokens, prompt }) {
    const rgba = mod.frame_js(w, h);
    const settings = JSON.stringify({ max_new_tokens: tokens });
    const ch = new MessageChannel();
    let count = 0, messages = 0;
    ch.port2.onmessage = () => {};
    const t0 = performance.now();
    const onToken = (id, piece, n) => {  // n: tokens in this call (the runtime batches them)
      count += n ?? 1; messages += 1;
      ch.port1.postMessage({ type: "token", id: 1, token: id, piece, count, ms: performance.now() - t0 });
    };
    const res = JSON.parse(await mod.profile(rgba, w, h, prompt, settings, onToken));
    ch.port1.close();
    return { ...res, messages };
  }

  async function unload() { await mod.close(); }

  // Per step of a replica of the Python loop: [embed_tokens ms, decoder ms, rest ms].
  async function stepBreakdown({ w, h, tokens, prompt }) {
    return JSON.parse(await mod.step_breakdown(w, h, prompt, tokens));
  }

  return { init, preprocess, load, unload, stepBreakdown, pyLoop, jsLoop, profile, get pyodide() { return py; } };
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : null;
}
