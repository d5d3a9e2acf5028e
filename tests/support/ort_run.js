#!/usr/bin/env node
// Runs one ONNX model in ONNX Runtime for Node, the reference of qforge's equivalence tests.
//
//   node ort_run.js <model.onnx> <input.npy>... --out <dir>
//
// Inputs feed the model's inputs in order; output i is written to <dir>/out<i>.npy. One intra-op
// thread and no graph optimizations, so ORT runs each op's plain kernel. The package is found
// through QFORGE_ORT_DIR (the folder holding node_modules/onnxruntime-node).
'use strict';
const fs = require('fs');
const path = require('path');

// .npy reading and writing are shared with tools/ort_dump.js.
const {readNpy, encodeNpy} = require(path.join(__dirname, '..', '..', 'tools', 'ort_dump.js'));

function parseArgs(argv) {
  const opts = {model: null, inputs: [], out: null};
  for (let i = 0; i < argv.length; ++i) {
    if (argv[i] === '--out') {
      opts.out = argv[++i];
    } else if (opts.model === null) {
      opts.model = argv[i];
    } else {
      opts.inputs.push(argv[i]);
    }
  }
  if (!opts.model || !opts.out) {
    throw new Error('usage: node ort_run.js <model.onnx> <input.npy>... --out <dir>');
  }
  return opts;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const ortRoot = process.env.QFORGE_ORT_DIR || path.join(__dirname, '..', '..', '.deps', 'ort');
  const ort = require(path.join(ortRoot, 'node_modules', 'onnxruntime-node'));
  const session = await ort.InferenceSession.create(opts.model, {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'disabled',
    executionProviders: ['cpu'],
  });
  if (opts.inputs.length !== session.inputNames.length) {
    throw new Error(`${opts.model}: the model takes ${session.inputNames.length} inputs, got ` +
                    `${opts.inputs.length}`);
  }
  const feeds = {};
  session.inputNames.forEach((name, i) => {
    const t = readNpy(opts.inputs[i]);
    feeds[name] = new ort.Tensor(t.type.ort, t.data, t.shape);
  });
  const results = await session.run(feeds);
  fs.mkdirSync(opts.out, {recursive: true});
  session.outputNames.forEach((name, i) => {
    fs.writeFileSync(path.join(opts.out, `out${i}.npy`), encodeNpy(results[name], name));
  });
}

main().catch((e) => {
  process.stderr.write(`ort_run: ${e.message}\n`);
  process.exit(1);
});
