import { seedBatch } from './sim-batch.js';

seedBatch(1001, 1000);
