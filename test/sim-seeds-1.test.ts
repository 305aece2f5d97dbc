import { seedBatch } from './sim-batch.js';

seedBatch(1, 1000);
